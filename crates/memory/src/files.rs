//! Reading the kernel's text files (under `/proc` and `/sys`) and parsing their common fields.

use std::path::Path;

use crate::error::ProbeError;

/// The whole text of `path`.
pub(crate) fn read_text(path: &Path) -> Result<String, ProbeError> {
    std::fs::read_to_string(path).map_err(|source| ProbeError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The value of the `name:   1234 kB` line, as `/proc/self/status` and `/proc/meminfo` write
/// them, in bytes. `None` when no such line holds a number in kB.
pub(crate) fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        let mut parts = value.split_whitespace();
        let kib: u64 = parts.next()?.parse().ok()?;
        match (parts.next(), parts.next()) {
            (Some("kB"), None) => kib.checked_mul(1024),
            _ => None,
        }
    })
}

/// The one unsigned integer a file such as `memory.current` holds.
pub(crate) fn single_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::files::{kib_field, single_u64};

    const STATUS: &str = "Name:\therald\nVmPeak:\t  123456 kB\nVmRSS:\t   20480 kB\nRssAnon:\t   10240 kB\nThreads:\t9\n";

    #[test]
    fn a_kib_field_is_read_in_bytes() {
        assert_eq!(kib_field(STATUS, "VmRSS"), Some(20_480 * 1024));
        assert_eq!(
            kib_field("MemTotal:       16318540 kB\n", "MemTotal"),
            Some(16_318_540 * 1024)
        );
    }

    #[test]
    fn a_kib_field_needs_its_exact_name_and_unit() {
        assert_eq!(kib_field(STATUS, "Vm"), None);
        assert_eq!(kib_field(STATUS, "Threads"), None);
        assert_eq!(kib_field("VmRSS: 12 MB\n", "VmRSS"), None);
        assert_eq!(kib_field("VmRSS: 12\n", "VmRSS"), None);
        assert_eq!(kib_field("VmRSS: 99999999999999999999 kB\n", "VmRSS"), None);
    }

    #[test]
    fn a_single_integer_may_end_with_a_newline() {
        assert_eq!(single_u64("4096\n"), Some(4096));
        assert_eq!(single_u64("max\n"), None);
        assert_eq!(single_u64(""), None);
    }

    proptest! {
        #[test]
        fn parsing_never_panics_on_any_text(text in any::<String>()) {
            let _ = kib_field(&text, "VmRSS");
            let _ = single_u64(&text);
        }

        #[test]
        fn parsing_never_panics_on_lines_that_look_right(kib in any::<u64>(), tail in "[ a-zB]{0,6}") {
            let text = format!("VmRSS:\t{kib}{tail}\n");
            let parsed = kib_field(&text, "VmRSS");
            prop_assert!(parsed.is_none() || parsed == kib.checked_mul(1024));
        }
    }
}
