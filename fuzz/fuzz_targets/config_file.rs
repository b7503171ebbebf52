//! Fuzzes the configuration loader through its public API, `BaseConfig::load` with a TOML file:
//! any file gives a configuration or a `ConfigError`, never a panic.

#![no_main]

use std::{path::PathBuf, sync::OnceLock};

use herald_config::{BaseConfig, Sources};
use libfuzzer_sys::fuzz_target;

/// The file the loader reads, one per fuzzing process (the loader reads a path, not text).
fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        std::env::temp_dir().join(format!("herald-fuzz-config-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    if std::fs::write(file(), data).is_err() {
        return;
    }
    let _ = BaseConfig::load(Sources {
        file: Some(file()),
        // A secret, so that a file that is otherwise valid gets past the rule that needs one.
        env: vec![(
            "HERALD_JWT_SECRET".to_owned(),
            "fuzz-secret-0123456789abcdef0123".to_owned(),
        )],
        overrides: Vec::new(),
    });
});
