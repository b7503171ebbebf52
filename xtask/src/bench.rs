//! `cargo xtask bench`: runs `herald-bench` scenarios against Herald and nginx + nchan, each
//! server fresh per scenario and pinned to core 0, the generator pinned to core 1, then writes
//! `target/bench/results.json` and prints the side-by-side table.
//!
//! Everything here is process orchestration with `std::process`; the measuring, the JSON and
//! the table live in the `herald-bench` binary.

use std::{
    env, fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{Result, cargo, project_root};

/// `cargo xtask bench --help`.
pub(crate) const HELP: &str = "\
usage: cargo xtask bench [options]

Runs Herald's load generator (herald-bench) against a fresh server per scenario: Herald, and
nginx + nchan for comparison. The server runs on core 0 and the generator on core 1
(taskset), both with `ulimit -n 20000`. Each scenario prints one JSON line; all of them go to
target/bench/results.json, and a table compares the targets side by side.

options:
  --smoke                 CI mode: small sizes, debug binaries, Herald only; fails on any
                          loss, duplicate, reordering or failed connection (not on speed)
  --scenario NAME         fanout | p2p | idle | churn | curve (repeatable; default: all)
  --target NAME           herald | nchan | both (default: both; --smoke, --cores and
                          --redis: herald)
  --no-pin                do not pin the processes to cores
  --cores LIST            scaling: Herald on N cores (0..N-1) and the generator on the others,
                          for each N of the list (e.g. 1,2,4,8; default scenario: fanout)
  --redis                 Herald behind a fresh redis-server (HERALD_REDIS_URL) beside Herald in
                          memory, and redis-benchmark's PUBLISH rate as the ceiling (default
                          scenarios: fanout, p2p)

The churn scenario also runs a floor server (`herald-bench floor`: the same client answered
with fixed bytes, no state) pinned like Herald: what Herald spends above it is Herald's.

size overrides (defaults: full / --smoke):
  --subscribers N         fanout subscribers                 (10000 / 50)
  --topics N              fanout topics                      (1 / 1)
  --messages N            fanout publications                (1000 / 200)
  --size BYTES            payload size                       (256)
  --rate N                fanout publications/s              (as fast as flow control allows)
  --p2p-connections N     p2p connections                    (2000 / 20)
  --p2p-rate N            p2p publications/s in all          (20000 / 1000)
  --p2p-secs N            p2p seconds of publishing          (10 / 1)
  --idle-connections N    idle connections                   (18000 / 200)
  --churn-cycles N        churn cycles                       (10000 / 200)
  --churn-concurrency N   churn cycles at once               (32 / 8)
  --curve LIST            curve subscriber counts            (1000,5000,10000,18000 / 10,50)
  --curve-deliveries N    deliveries per curve point         (4000000 / 2000)

Full mode builds release binaries and installs nginx-light and libnginx-mod-nchan with apt-get
when missing (nchan is skipped, with a message, if that fails). CPU figures are server CPU
(utime + stime of the server and its children, from /proc) per unit of work.
";

/// The scenarios, in the order they run.
const SCENARIOS: [&str; 5] = ["fanout", "p2p", "idle", "churn", "curve"];
/// The HS256 secret the bench's Herald is started with (any 32+ bytes).
const JWT_SECRET: &str = "herald-bench-secret-0123456789abcdef0123456789";
/// The API key the bench's Herald accepts.
const API_KEY: &str = "herald-bench-key";
/// Open files for both processes: the machine's hard limit.
const OPEN_FILES: u32 = 20_000;
/// Where Debian's nchan package puts the module.
const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

/// Parsed `cargo xtask bench` options.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    smoke: bool,
    scenarios: Vec<String>,
    herald: bool,
    nchan: bool,
    pin: bool,
    /// `--cores`: server core counts to scale over.
    cores: Vec<usize>,
    /// `--redis`: Herald behind Redis as well.
    redis: bool,
    /// `--name value` overrides, in the names of the options.
    sizes: Vec<(String, String)>,
}

/// The size options and the (full, smoke) defaults they override.
const SIZES: &[(&str, &str, &str)] = &[
    ("subscribers", "10000", "50"),
    ("topics", "1", "1"),
    ("messages", "1000", "200"),
    ("size", "256", "256"),
    ("rate", "", ""),
    ("p2p-connections", "2000", "20"),
    ("p2p-rate", "20000", "1000"),
    ("p2p-secs", "10", "1"),
    ("idle-connections", "18000", "200"),
    ("churn-cycles", "10000", "200"),
    ("churn-concurrency", "32", "8"),
    ("curve", "1000,5000,10000,18000", "10,50"),
    ("curve-deliveries", "4000000", "2000"),
];

impl Options {
    fn parse(args: &[String]) -> Result<Option<Self>> {
        let mut options = Self {
            smoke: false,
            scenarios: Vec::new(),
            herald: true,
            nchan: true,
            pin: true,
            cores: Vec::new(),
            redis: false,
            sizes: Vec::new(),
        };
        let mut target = None;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value\n\n{HELP}"))
            };
            match arg.as_str() {
                "--help" | "-h" => return Ok(None),
                "--smoke" => options.smoke = true,
                "--no-pin" => options.pin = false,
                "--redis" => options.redis = true,
                "--cores" => {
                    let given = value(arg)?;
                    let cores: Option<Vec<usize>> = given
                        .split(',')
                        .map(|n| n.trim().parse::<usize>().ok().filter(|n| *n > 0))
                        .collect();
                    options.cores = cores.ok_or_else(|| {
                        format!("--cores: `{given}` is not a list of core counts")
                    })?;
                }
                "--scenario" => {
                    let name = value(arg)?;
                    if !SCENARIOS.contains(&name.as_str()) {
                        return Err(format!(
                            "unknown scenario `{name}`: expected one of {}",
                            SCENARIOS.join(", ")
                        ));
                    }
                    options.scenarios.push(name);
                }
                "--target" => target = Some(value(arg)?),
                other => {
                    let name = other.strip_prefix("--").unwrap_or(other);
                    if !SIZES.iter().any(|(n, _, _)| *n == name) {
                        return Err(format!("unknown option `{other}`\n\n{HELP}"));
                    }
                    let given = value(other)?;
                    let valid = if name == "curve" {
                        given
                            .split(',')
                            .all(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
                    } else {
                        given.parse::<f64>().is_ok_and(|n| n > 0.0)
                    };
                    if !valid {
                        return Err(format!("{other}: `{given}` is not a positive number"));
                    }
                    options.sizes.push((name.to_owned(), given));
                }
            }
        }
        let special = options.redis || !options.cores.is_empty();
        (options.herald, options.nchan) = match target.as_deref() {
            None if options.smoke || special => (true, false),
            None | Some("both") => (true, true),
            Some("herald") => (true, false),
            Some("nchan") => (false, true),
            Some(other) => {
                return Err(format!(
                    "unknown target `{other}`: expected herald, nchan or both"
                ));
            }
        };
        if options.scenarios.is_empty() {
            let defaults: &[&str] = if options.redis {
                &["fanout", "p2p"]
            } else if options.cores.is_empty() {
                &SCENARIOS
            } else {
                &["fanout"]
            };
            options.scenarios = defaults.iter().map(|s| (*s).to_owned()).collect();
        }
        Ok(Some(options))
    }

    /// A size setting: the override, else the default for the mode ("" when unset).
    fn size(&self, name: &str) -> String {
        if let Some((_, value)) = self.sizes.iter().rev().find(|(n, _)| n == name) {
            return value.clone();
        }
        SIZES
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, full, smoke)| if self.smoke { *smoke } else { *full })
            .unwrap_or_default()
            .to_owned()
    }

    /// `herald-bench` arguments for a scenario.
    fn scenario_args(&self, scenario: &str) -> Vec<String> {
        let mut args = vec![scenario.to_owned()];
        let mut push = |flag: &str, value: String| {
            if !value.is_empty() {
                args.push(flag.to_owned());
                args.push(value);
            }
        };
        match scenario {
            "fanout" => {
                push("--subscribers", self.size("subscribers"));
                push("--topics", self.size("topics"));
                push("--messages", self.size("messages"));
                push("--size", self.size("size"));
                push("--rate", self.size("rate"));
            }
            "p2p" => {
                push("--connections", self.size("p2p-connections"));
                push("--rate", self.size("p2p-rate"));
                push("--duration-secs", self.size("p2p-secs"));
                push("--size", self.size("size"));
                // One request per publication, as nchan publishes: the scenario compares the
                // two servers' single-publish path.
                push("--publish", "single".to_owned());
            }
            "idle" => {
                push("--connections", self.size("idle-connections"));
                if self.smoke {
                    push("--settle-ms", "500".to_owned());
                    push("--hold-secs", "1".to_owned());
                }
            }
            "churn" => {
                push("--cycles", self.size("churn-cycles"));
                push("--concurrency", self.size("churn-concurrency"));
                if self.smoke {
                    push("--settle-ms", "500".to_owned());
                }
            }
            "curve" => {
                push("--points", self.size("curve"));
                push("--deliveries", self.size("curve-deliveries"));
                push("--size", self.size("size"));
                if self.smoke {
                    push("--min-messages", "20".to_owned());
                    push("--settle-ms", "200".to_owned());
                }
            }
            _ => {}
        }
        if self.smoke && matches!(scenario, "fanout" | "p2p" | "curve") {
            // Debug binaries on a busy CI machine: give stragglers time before calling them lost.
            push("--drain-secs", "10".to_owned());
        }
        args
    }
}

/// How the processes are started.
struct Setup {
    root: PathBuf,
    bin: PathBuf,
    out: PathBuf,
    clk_tck: u64,
    pin: bool,
    /// Cores on this machine.
    cores: usize,
    /// The nginx binary and the nchan module, when nchan can run.
    nchan: Option<Nchan>,
}

/// Where nginx and its nchan module are.
#[derive(Debug, Clone)]
struct Nchan {
    nginx: String,
    module: String,
}

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Herald,
    Nchan,
    /// `herald-bench floor`: the churn client answered with fixed bytes.
    Floor,
}

impl Server {
    const fn name(self) -> &'static str {
        match self {
            Self::Herald => "herald",
            Self::Nchan => "nchan",
            Self::Floor => "floor",
        }
    }
}

/// One server in one setup: where it and the generator run, and whether Herald is behind Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variant {
    server: Server,
    /// What the reports call it.
    label: String,
    /// The server's cores (a `taskset` list), when pinned.
    server_cores: Option<String>,
    /// The generator's cores, when pinned.
    generator_cores: Option<String>,
    /// The generator's runtime threads.
    generator_threads: usize,
    /// Herald behind a fresh redis-server.
    redis: bool,
}

impl Variant {
    /// The usual setup: the server on core 0, the generator on core 1.
    fn plain(server: Server, pin: bool) -> Self {
        Self {
            server,
            label: server.name().to_owned(),
            server_cores: pin.then(|| "0".to_owned()),
            generator_cores: pin.then(|| "1".to_owned()),
            generator_threads: 1,
            redis: false,
        }
    }

    /// Herald on `n` cores (0..n-1) and the generator on the rest of the machine's `cores`;
    /// where none is left, the generator shares them (and the label says so).
    fn scaled(n: usize, cores: usize, pin: bool) -> Self {
        let rest = cores.saturating_sub(n);
        let shared = rest == 0;
        Self {
            server: Server::Herald,
            label: if shared {
                format!("herald {n}c shared")
            } else {
                format!("herald {n}c")
            },
            server_cores: pin.then(|| core_list(0, n)),
            generator_cores: (pin && !shared).then(|| core_list(n, rest)),
            generator_threads: rest.max(1),
            redis: false,
        }
    }

    /// The same setup with Herald behind Redis.
    fn behind_redis(&self) -> Self {
        Self {
            label: format!("{}+redis", self.label),
            redis: true,
            ..self.clone()
        }
    }
}

/// `first`..`first + count - 1` as a `taskset` list.
fn core_list(first: usize, count: usize) -> String {
    if count <= 1 {
        first.to_string()
    } else {
        format!("{first}-{}", first + count - 1)
    }
}

/// The setups to run for `scenario`, in order.
fn variants(options: &Options, setup: &Setup, scenario: &str) -> Vec<Variant> {
    let mut list = Vec::new();
    if options.herald {
        let heralds: Vec<Variant> = if options.cores.is_empty() {
            vec![Variant::plain(Server::Herald, setup.pin)]
        } else {
            options
                .cores
                .iter()
                .map(|&n| Variant::scaled(n, setup.cores, setup.pin))
                .collect()
        };
        for herald in heralds {
            let twin = options.redis.then(|| herald.behind_redis());
            list.push(herald);
            list.extend(twin);
        }
        if scenario == "churn" && options.cores.is_empty() && !options.redis {
            list.push(Variant::plain(Server::Floor, setup.pin));
        }
    }
    if options.nchan && setup.nchan.is_some() {
        list.push(Variant::plain(Server::Nchan, setup.pin));
    }
    list
}

/// Runs `cargo xtask bench` with `args`.
pub(crate) fn bench(args: &[String]) -> Result {
    let Some(options) = Options::parse(args)? else {
        print!("{HELP}");
        return Ok(());
    };
    let root = project_root();
    env::set_current_dir(&root).map_err(|e| format!("cannot enter {}: {e}", root.display()))?;
    let profile = if options.smoke { "debug" } else { "release" };
    // Every binary of both packages (`--bin herald` would leave herald-bench out).
    let mut build = vec![
        "build",
        "--locked",
        "-p",
        "herald-service",
        "-p",
        "herald-bench",
    ];
    if !options.smoke {
        build.push("--release");
    }
    cargo(&build, &[])?;
    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let out = target_dir.join("bench");
    fs::create_dir_all(out.join("logs"))
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;

    let clk_tck = clock_ticks();
    let cores = thread::available_parallelism().map_or(1, usize::from);
    let pin = options.pin && can_pin(cores);
    if let Some(&n) = options.cores.iter().find(|&&n| n > cores) {
        return Err(format!(
            "--cores {n}: this machine has {cores} cores (run the larger counts on a larger one)"
        ));
    }
    if options.redis && redis_bin("redis-server").is_none() {
        return Err(
            "--redis needs redis-server (apt-get install redis-server, as cargo xtask ci does)"
                .to_owned(),
        );
    }
    let nchan = if options.nchan {
        prepare_nchan(options.smoke)
    } else {
        None
    };
    let setup = Setup {
        root,
        bin: target_dir.join(profile),
        out,
        clk_tck,
        pin,
        cores,
        nchan,
    };
    if !options.herald && setup.nchan.is_none() {
        return Err("no target to benchmark (nchan is unavailable)".to_owned());
    }

    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for scenario in &options.scenarios {
        for variant in variants(&options, &setup, scenario) {
            println!("xtask: bench {} {scenario}", variant.label);
            match run_one(&setup, &options, &variant, scenario) {
                Ok(output) => lines.extend(output),
                Err(error) => {
                    eprintln!("xtask: bench {} {scenario} failed: {error}", variant.label);
                    failures.push(format!("{} {scenario}: {error}", variant.label));
                }
            }
        }
    }
    if options.redis {
        match redis_ceiling(&setup, &options) {
            Ok(summary) => println!("{summary}"),
            Err(error) => failures.push(format!("redis-benchmark: {error}")),
        }
    }

    let results = setup.out.join("results.json");
    // When the run happened, for the reader of the results: the system clock is the point.
    #[allow(clippy::disallowed_methods)]
    let document = format!(
        "{{\"mode\":\"{}\",\"unix_time\":{},\"clk_tck\":{},\"pinned\":{},\"cores\":{},\"results\":[\n{}\n]}}\n",
        if options.smoke { "smoke" } else { "full" },
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        setup.clk_tck,
        setup.pin,
        setup.cores,
        lines.join(",\n"),
    );
    fs::write(&results, document)
        .map_err(|e| format!("cannot write {}: {e}", results.display()))?;
    let status = Command::new(setup.bin.join("herald-bench"))
        .arg("report")
        .arg(&results)
        .status()
        .map_err(|e| format!("cannot run herald-bench report: {e}"))?;
    if !status.success() {
        failures.push("the results table could not be printed".to_owned());
    }
    println!("xtask: results in {}", results.display());
    if failures.is_empty() {
        println!("xtask: bench passed");
        Ok(())
    } else {
        Err(format!("bench failed:\n  {}", failures.join("\n  ")))
    }
}

/// Starts a fresh server (and a fresh Redis behind Herald when the variant asks), runs one
/// scenario against it, stops them; returns the JSON lines.
fn run_one(
    setup: &Setup,
    options: &Options,
    variant: &Variant,
    scenario: &str,
) -> Result<Vec<String>> {
    let server = variant.server;
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let name = variant.label.replace(' ', "-");
    let log = setup
        .out
        .join("logs")
        .join(format!("{name}-{scenario}.log"));
    let mut redis = if variant.redis {
        Some(start_redis(setup, variant)?)
    } else {
        None
    };
    let redis_url = redis.as_ref().map(|(_, url)| url.clone());
    let mut child = match start_server(setup, variant, addr, &log, redis_url.as_deref()) {
        Ok(child) => child,
        Err(error) => {
            if let Some((redis, _)) = &mut redis {
                stop(redis);
            }
            return Err(error);
        }
    };
    let result = wait_until_listening(&mut child, addr, &log).and_then(|()| {
        let mut command = limited(variant.generator_cores.as_deref());
        let target = match server {
            Server::Nchan => "nchan",
            Server::Herald | Server::Floor => "herald",
        };
        command
            .arg(setup.bin.join("herald-bench"))
            .args(["--target", target, "--addr", &addr.to_string()])
            .args(["--label", &variant.label])
            .args(["--threads", &variant.generator_threads.to_string()])
            .args(["--server-pid", &child.id().to_string()])
            .args(["--clk-tck", &setup.clk_tck.to_string()]);
        if server != Server::Nchan {
            command.args(["--api-key", API_KEY, "--jwt-secret", JWT_SECRET]);
        }
        if options.smoke {
            command.arg("--strict");
        }
        command.args(options.scenario_args(scenario));
        command.stdin(Stdio::null()).stderr(Stdio::inherit());
        let output = command
            .output()
            .map_err(|e| format!("cannot run herald-bench: {e}"))?;
        let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.starts_with('{'))
            .map(str::to_owned)
            .collect();
        if output.status.success() && !lines.is_empty() {
            Ok(lines)
        } else {
            Err(format!(
                "herald-bench exited with {} (server log: {})",
                output.status,
                log.display()
            ))
        }
    });
    stop(&mut child);
    if let Some((redis, _)) = &mut redis {
        stop(redis);
    }
    result
}

/// `sh -c 'ulimit -n 20000; exec "$@"'`, pinned to the `cores` list when given: append the
/// program and its arguments.
fn limited(cores: Option<&str>) -> Command {
    let mut command = Command::new("sh");
    command.args([
        "-c",
        &format!("ulimit -n {OPEN_FILES} 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$@\""),
        "sh",
    ]);
    if let Some(cores) = cores {
        command.args(["taskset", "-c", cores]);
    }
    command
}

fn start_server(
    setup: &Setup,
    variant: &Variant,
    addr: SocketAddr,
    log: &Path,
    redis_url: Option<&str>,
) -> Result<Child> {
    let server = variant.server;
    let log_file =
        fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let mut command = limited(variant.server_cores.as_deref());
    match server {
        Server::Herald => {
            command
                .arg(setup.bin.join("herald"))
                .env("HERALD_LISTEN", addr.to_string())
                .env("HERALD_JWT_SECRET", JWT_SECRET)
                .env("HERALD_API_KEYS", API_KEY)
                .env("HERALD_LOG", "warn")
                .env("HERALD_MAX_CONNECTIONS", "100000")
                // Per-user limits must not interfere: every client is its own user anyway.
                // 10000 is the largest tier quota the configuration accepts.
                .env("HERALD_TIERS", "free:10000:1000000")
                .env("HERALD_MAX_CONNECTIONS_PER_USER", "10000");
            if let Some(url) = redis_url {
                command.env("HERALD_REDIS_URL", url);
            }
        }
        Server::Floor => {
            command.arg(setup.bin.join("herald-bench")).args([
                "--addr",
                &addr.to_string(),
                "floor",
            ]);
        }
        Server::Nchan => {
            let Some(nchan) = &setup.nchan else {
                return Err("nchan is not available".to_owned());
            };
            let dir = setup.out.join("nchan");
            fs::create_dir_all(dir.join("body"))
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let conf = dir.join("nginx.conf");
            fs::write(&conf, nginx_conf(&nchan.module, &dir, addr))
                .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
            command
                .arg(&nchan.nginx)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&conf)
                .args(["-g", "daemon off;"]);
        }
    }
    command
        .current_dir(&setup.root)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", server.name()))
}

/// `redis-server` or `redis-benchmark`, when installed.
fn redis_bin(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Starts an empty, unpersisted redis-server on a free port, on the generator's cores (so the
/// server's CPU figure is Herald's alone); returns it and its URL once it answers.
fn start_redis(setup: &Setup, variant: &Variant) -> Result<(Child, String)> {
    let bin = redis_bin("redis-server").ok_or("redis-server is not installed")?;
    let port = free_port()?;
    let mut child = limited(variant.generator_cores.as_deref())
        .arg(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .current_dir(&setup.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = setup.out.join("logs").join("redis.log");
    if let Err(error) = wait_until_listening(&mut child, addr, &log) {
        stop(&mut child);
        return Err(error);
    }
    Ok((child, format!("redis://{addr}")))
}

/// Runs `redis-benchmark` PUBLISH (the bench's payload size, one subscriber listening, without
/// and with pipelining) against a fresh Redis: the ceiling of what a node behind it can
/// publish. Returns the summary lines.
fn redis_ceiling(setup: &Setup, options: &Options) -> Result<String> {
    let benchmark = redis_bin("redis-benchmark").ok_or("redis-benchmark is not installed")?;
    let variant = Variant::plain(Server::Herald, setup.pin);
    let (mut redis, url) = start_redis(setup, &variant)?;
    let port = url.rsplit(':').next().unwrap_or_default().to_owned();
    let size: usize = options.size("size").parse().unwrap_or(256);
    let payload = "x".repeat(size);
    let requests = if options.smoke { "20000" } else { "500000" };
    // One subscriber, so every PUBLISH is delivered once.
    let subscriber = Command::new(redis_bin("redis-cli").unwrap_or_else(|| "redis-cli".into()))
        .args(["-p", &port, "subscribe", "bench"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    thread::sleep(Duration::from_millis(200));
    let mut summary = Vec::new();
    for pipeline in ["1", "16"] {
        let output = limited(variant.server_cores.as_deref())
            .arg(&benchmark)
            .args([
                "-p", &port, "-n", requests, "-c", "50", "-P", pipeline, "--csv",
            ])
            .args(["PUBLISH", "bench", &payload])
            .output()
            .map_err(|e| format!("cannot run redis-benchmark: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        // `"test","rps",...` then one row per test.
        let rps = text
            .lines()
            .nth(1)
            .and_then(|row| row.split(',').nth(1))
            .map(|rps| rps.trim_matches('"').to_owned())
            .ok_or_else(|| format!("no figures from redis-benchmark: {text}"))?;
        summary.push(format!(
            "xtask: redis-benchmark PUBLISH {size} B, 1 subscriber, 50 clients, pipeline {pipeline}: {rps} publications/s"
        ));
    }
    if let Ok(mut subscriber) = subscriber {
        let _ = subscriber.kill();
        let _ = subscriber.wait();
    }
    stop(&mut redis);
    let summary = summary.join("\n");
    let _ = fs::write(setup.out.join("redis-benchmark.txt"), &summary);
    Ok(summary)
}

/// nginx + nchan with the same shape as Herald's setup: one worker, a publisher location and a
/// WebSocket subscriber location per channel id. The message buffer (256 per channel, 5
/// minutes) mirrors Herald's default history.
fn nginx_conf(module: &str, dir: &Path, addr: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        "load_module {module};
worker_processes 1;
worker_rlimit_nofile 30000;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{
    worker_connections 30000;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    nchan_shared_memory_size 1024M;
    nchan_message_buffer_length 256;
    nchan_message_timeout 300s;
    server {{
        listen {addr};
        location ~ ^/pub/(\\w+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
        }}
        location ~ ^/sub/(\\w+)$ {{
            nchan_subscriber websocket;
            nchan_channel_id $1;
        }}
    }}
}}
"
    )
}

/// Waits (at most 20 s) until the server accepts TCP connections.
pub(crate) fn wait_until_listening(child: &mut Child, addr: SocketAddr, log: &Path) -> Result {
    for _ in 0..200 {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the server exited with {status} before listening (log: {})",
                log.display()
            ));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "the server did not listen on {addr} within 20 s (log: {})",
        log.display()
    ))
}

/// SIGTERM, up to 10 s to exit, then SIGKILL.
pub(crate) fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// `getconf CLK_TCK`, or 100 (Linux's value) when it cannot be read.
fn clock_ticks() -> u64 {
    let ticks = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok());
    ticks.unwrap_or_else(|| {
        println!("xtask: cannot read `getconf CLK_TCK`; assuming 100 ticks per second");
        100
    })
}

/// Whether `taskset` exists and there are two `cores` to pin to.
fn can_pin(cores: usize) -> bool {
    let taskset = Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if cores < 2 || !taskset {
        println!(
            "xtask: not pinning (needs taskset and 2 cores; have {cores} cores, taskset: {taskset}): the figures will be noisier"
        );
        return false;
    }
    true
}

/// Finds nginx with the nchan module, installing both in full mode when missing; `None` (with
/// a message) when nchan cannot be used.
fn prepare_nchan(smoke: bool) -> Option<Nchan> {
    if let Some(nchan) = find_nchan() {
        return Some(nchan);
    }
    if smoke {
        println!(
            "xtask: nginx + nchan is not installed; --smoke does not install it: skipping nchan"
        );
        return None;
    }
    println!("xtask: installing nginx-light and libnginx-mod-nchan");
    let installed = crate::apt::install(&["nginx-light", "libnginx-mod-nchan"]).is_ok();
    match (installed, find_nchan()) {
        (true, Some(nchan)) => Some(nchan),
        _ => {
            println!("xtask: could not install nginx + nchan (apt-get failed): skipping nchan");
            None
        }
    }
}

/// nginx and the nchan module, when both are installed.
fn find_nchan() -> Option<Nchan> {
    // /usr/sbin may be missing from PATH for a non-login shell.
    let nginx = ["nginx", "/usr/sbin/nginx"].into_iter().find(|nginx| {
        Command::new(nginx)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })?;
    let listed = Command::new("dpkg")
        .args(["-L", "libnginx-mod-nchan"])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|list| {
            list.lines()
                .find(|line| line.ends_with("/ngx_nchan_module.so"))
                .map(str::to_owned)
        });
    let module = listed
        .or_else(|| Some(NCHAN_MODULE.to_owned()))
        .filter(|path| Path::new(path).exists())?;
    Some(Nchan {
        nginx: nginx.to_owned(),
        module,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>> {
        Options::parse(&args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_run_every_scenario_on_both_targets() {
        let options = parse(&[]).unwrap().unwrap();
        assert_eq!(options.scenarios, SCENARIOS);
        assert!(options.herald && options.nchan && !options.smoke);
        assert_eq!(options.size("subscribers"), "10000");
    }

    #[test]
    fn smoke_is_small_and_herald_only() {
        let options = parse(&["--smoke"]).unwrap().unwrap();
        assert!(options.herald && !options.nchan);
        assert_eq!(
            options.scenario_args("fanout"),
            [
                "fanout",
                "--subscribers",
                "50",
                "--topics",
                "1",
                "--messages",
                "200",
                "--size",
                "256",
                "--drain-secs",
                "10"
            ]
        );
    }

    #[test]
    fn scenarios_targets_and_sizes_can_be_chosen() {
        let options = parse(&[
            "--scenario",
            "p2p",
            "--scenario",
            "idle",
            "--target",
            "nchan",
            "--p2p-rate",
            "500",
            "--curve",
            "5,10",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(options.scenarios, ["p2p", "idle"]);
        assert!(!options.herald && options.nchan);
        assert!(
            options
                .scenario_args("p2p")
                .windows(2)
                .any(|w| w == ["--rate", "500"])
        );
        assert!(
            options
                .scenario_args("p2p")
                .windows(2)
                .any(|w| w == ["--publish", "single"])
        );
        assert_eq!(options.size("curve"), "5,10");
    }

    fn setup(cores: usize, nchan: bool) -> Setup {
        Setup {
            root: PathBuf::new(),
            bin: PathBuf::new(),
            out: PathBuf::new(),
            clk_tck: 100,
            pin: true,
            cores,
            nchan: nchan.then(|| Nchan {
                nginx: "nginx".to_owned(),
                module: NCHAN_MODULE.to_owned(),
            }),
        }
    }

    fn labels(options: &Options, setup: &Setup, scenario: &str) -> Vec<String> {
        variants(options, setup, scenario)
            .into_iter()
            .map(|v| v.label)
            .collect()
    }

    #[test]
    fn churn_runs_the_floor_beside_herald_and_nchan() {
        let options = parse(&[]).unwrap().unwrap();
        let setup = setup(2, true);
        assert_eq!(
            labels(&options, &setup, "churn"),
            ["herald", "floor", "nchan"]
        );
        assert_eq!(labels(&options, &setup, "fanout"), ["herald", "nchan"]);
        let floor = &variants(&options, &setup, "churn")[1];
        assert_eq!(floor.server_cores.as_deref(), Some("0"));
        assert_eq!(floor.generator_cores.as_deref(), Some("1"));
    }

    #[test]
    fn cores_put_the_server_and_the_generator_on_separate_cores() {
        let options = parse(&["--cores", "1,2,4"]).unwrap().unwrap();
        assert_eq!(options.scenarios, ["fanout"]);
        assert!(options.herald && !options.nchan);
        let list = variants(&options, &setup(8, true), "fanout");
        let pins: Vec<_> = list
            .iter()
            .map(|v| {
                (
                    v.label.as_str(),
                    v.server_cores.as_deref(),
                    v.generator_cores.as_deref(),
                    v.generator_threads,
                )
            })
            .collect();
        assert_eq!(
            pins,
            [
                ("herald 1c", Some("0"), Some("1-7"), 7),
                ("herald 2c", Some("0-1"), Some("2-7"), 6),
                ("herald 4c", Some("0-3"), Some("4-7"), 4),
            ]
        );
        // No core left for the generator: it shares, and says so.
        let all = variants(
            &parse(&["--cores", "2"]).unwrap().unwrap(),
            &setup(2, false),
            "fanout",
        );
        assert_eq!(all[0].label, "herald 2c shared");
        assert_eq!(all[0].generator_cores, None);
        assert!(parse(&["--cores", "0"]).is_err());
        assert!(parse(&["--cores", "1,x"]).is_err());
    }

    #[test]
    fn redis_runs_herald_behind_redis_beside_memory() {
        let options = parse(&["--redis"]).unwrap().unwrap();
        assert_eq!(options.scenarios, ["fanout", "p2p"]);
        let list = variants(&options, &setup(2, true), "fanout");
        assert_eq!(
            list.iter()
                .map(|v| (v.label.as_str(), v.redis))
                .collect::<Vec<_>>(),
            [("herald", false), ("herald+redis", true)]
        );
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(parse(&["--scenario", "nope"]).is_err());
        assert!(parse(&["--target", "redis"]).is_err());
        assert!(parse(&["--subscribers", "-3"]).is_err());
        assert!(parse(&["--subscribers"]).is_err());
        assert!(parse(&["--curve", "10,x"]).is_err());
        assert!(parse(&["--frobnicate", "1"]).is_err());
        assert_eq!(parse(&["--help"]), Ok(None));
    }

    #[test]
    fn nginx_conf_has_the_publisher_and_websocket_locations() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 8088));
        let conf = nginx_conf(NCHAN_MODULE, Path::new("/tmp/n"), addr);
        assert!(conf.starts_with(&format!("load_module {NCHAN_MODULE};")));
        for line in [
            "worker_processes 1;",
            "worker_rlimit_nofile 30000;",
            "worker_connections 30000;",
            "listen 127.0.0.1:8088",
            r"location ~ ^/pub/(\w+)$",
            "nchan_publisher;",
            "nchan_subscriber websocket;",
            "nchan_channel_id $1;",
        ] {
            assert!(conf.contains(line), "missing {line}:\n{conf}");
        }
    }
}
