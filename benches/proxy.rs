//! pgbench harness: the same workloads directly against PostgreSQL, directly as a role under
//! PostgreSQL row-level security with the same row scope (the yardstick for what a scope costs
//! inside PostgreSQL), through pgveil as an unrestricted user, through pgveil as a restricted
//! user (pgbench_accounts protected with a row scope), and through PgBouncer (session mode)
//! when it is installed.
//!
//! Every target runs once per round, in an order that varies by round (`run_order`: over the
//! default number of rounds every target runs in every position, and right after every other
//! target, equally often), and the median of the rounds is reported (this 2-core machine is
//! noisy: one 5-second run of the same target moves by up to 10% at 1 client; one run per
//! target is not enough to rank them).
//!
//! pgveil runs as its own process (`pgveil serve`, the binary users deploy), as PgBouncer does.
//! pgbench, pgveil and PgBouncer each run in their own session (`setsid`), as PostgreSQL's
//! backends do and as a client and a proxy service do when deployed: with the kernel's
//! autogroup scheduling every session gets its own share of CPU, so a proxy that shared a
//! session with pgbench would be measured with a handicap.
//!
//! Run: cargo bench --bench proxy   (PGVEIL_BENCH_SECONDS=5 by default, PGVEIL_BENCH_ROUNDS
//! one whole design: 10 rounds with PgBouncer, 4 without;
//! PGVEIL_BENCH_WORKLOADS, PGVEIL_BENCH_CLIENTS, PGVEIL_BENCH_SESSION_THREADS and
//! PGVEIL_BENCH_POOL (upstream pool size, default 40; 0 = off): see README)
//!
//! PGVEIL_BENCH_CALLGRIND=1 instead counts the user-space instructions per transaction of the
//! proxies under callgrind (`count_instructions`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::path::Path;
use std::process::Command;

use pgveil::embedded_pg::{free_port, EmbeddedPg};

struct Target {
    name: &'static str,
    /// The proxy process whose CPU time is charged to this target (none when direct).
    proxy_pid: Option<u32>,
    /// The target this one is compared with in the "vs base" column.
    base: &'static str,
    port: u16,
    user: String,
    password: String,
}

struct Outcome {
    tps: f64,
    latency_ms: f64,
    /// CPU time of the proxy process per transaction, in microseconds.
    proxy_cpu_us: Option<f64>,
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the parenthesised command name; utime and stime are fields 14 and 15
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// How long a pgbench run lasts.
#[derive(Clone, Copy)]
enum Length {
    Seconds(u32),
    Transactions(u32),
}

fn pgbench(bin: &Path, t: &Target, args: &[&str], clients: u32, length: Length) -> Option<Outcome> {
    let (flag, n) = match length {
        Length::Seconds(n) => ("-T", n),
        Length::Transactions(n) => ("-t", n),
    };
    let jobs = clients.min(2).to_string();
    let cpu_before = t.proxy_pid.and_then(cpu_seconds);
    let out = own_session(&bin.join("pgbench"))
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &t.port.to_string(),
            "-U",
            &t.user,
        ])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &jobs,
            flag,
            &n.to_string(),
        ])
        .args(args)
        .arg("crm")
        .env("PGPASSWORD", &t.password)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!(
            "pgbench failed for {}: {}{}",
            t.name,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let num = |prefix: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))?
            .split(['=', ' ', '/']) // "processed: 1000/1000" with -t
            .filter_map(|w| w.parse().ok())
            .next()
    };
    let cpu_after = t.proxy_pid.and_then(cpu_seconds);
    let transactions = num("number of transactions actually processed:")?;
    Some(Outcome {
        tps: num("tps")?,
        latency_ms: num("latency average")?,
        proxy_cpu_us: cpu_before
            .zip(cpu_after)
            .map(|(b, a)| (a - b) * 1e6 / transactions.max(1.0)),
    })
}

/// The order of `n` targets in `round`: a Williams design. Each run can leave the machine
/// in a state that helps or hurts the next one (measured: at 1 client, extended protocol,
/// pgveil ran 7% behind PgBouncer when it always followed `direct-rls` and PgBouncer always
/// followed `pgveil-restricted`, and 4% ahead with the order reversed). Over
/// `design_rounds(n)` rounds every target runs in every position equally often and directly
/// after every other target equally often.
fn run_order(round: usize, n: usize) -> Vec<usize> {
    // first row 0, n-1, 1, n-2, 2, …; then shifted by one per round; for odd n, the same
    // rows reversed follow
    let first = |j: usize| if j % 2 == 0 { j / 2 } else { n - 1 - j / 2 };
    let row = round % design_rounds(n);
    let order: Vec<usize> = (0..n).map(|j| (first(j) + row) % n).collect();
    if row >= n {
        order.into_iter().rev().collect()
    } else {
        order
    }
}

/// Rounds in one whole Williams design for `n` targets.
fn design_rounds(n: usize) -> usize {
    if n % 2 == 0 {
        n
    } else {
        2 * n
    }
}

/// TPS of target `a` over target `b` in each round where both ran (the two ran seconds
/// apart, so drift on the machine cancels out more than between medians), and the
/// median of those ratios.
fn paired_ratios(
    targets: &[Target],
    runs: &[Vec<Option<Outcome>>],
    a: &str,
    b: &str,
) -> Option<Paired> {
    let at = |n: &str| targets.iter().position(|t| t.name == n);
    let (a, b) = (&runs[at(a)?], &runs[at(b)?]);
    let mut ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| Some(x.as_ref()?.tps / y.as_ref()?.tps))
        .collect();
    let each = ratios
        .iter()
        .map(|r| format!("{r:.3}"))
        .collect::<Vec<_>>()
        .join(" ");
    ratios.sort_by(f64::total_cmp);
    let median = *ratios.get(ratios.len() / 2)?;
    Some(Paired {
        each,
        median,
        interval: median_interval(&ratios),
    })
}

/// The paired ratios of one workload: each round's, their median, and a 95% interval for it.
struct Paired {
    each: String,
    median: f64,
    interval: Option<(f64, f64)>,
}

/// A distribution-free interval of at least 95% confidence for the median of `sorted`
/// (order statistics k and n+1-k, with k the largest such that fewer than k of n values
/// fall below the median with probability at most 2.5%); None below 6 values.
fn median_interval(sorted: &[f64]) -> Option<(f64, f64)> {
    let n = sorted.len();
    let mut below = 0.0; // P(Binomial(n, 1/2) <= k - 1)
    let mut term = 0.5f64.powi(i32::try_from(n).ok()?); // C(n, i) / 2^n for i = 0
    let mut k = 0;
    for i in 0..n {
        below += term;
        if below > 0.025 {
            break;
        }
        k = i + 1;
        term = term * (n - i) as f64 / (i + 1) as f64;
    }
    (k >= 1).then(|| (sorted[k - 1], sorted[n - k]))
}

/// The run with the median TPS (its own latency goes with it).
fn median(mut runs: Vec<Outcome>) -> Option<Outcome> {
    runs.sort_by(|a, b| a.tps.total_cmp(&b.tps));
    let mid = runs.len() / 2;
    (!runs.is_empty()).then(|| runs.swap_remove(mid))
}

const BENCH_POLICY: &str = "
INSERT INTO pgveil.departments (id, name) VALUES ('1', 'Branch 1');
INSERT INTO pgveil.objects (name, table_name, primary_key, department_column) VALUES
    ('pgbench_accounts', 'pgbench_accounts', 'aid', 'bid');
INSERT INTO pgveil.objects (name, table_name, primary_key) VALUES
    ('pgbench_branches', 'pgbench_branches', 'bid'), ('pgbench_tellers', 'pgbench_tellers', 'tid'),
    ('pgbench_history', 'pgbench_history', 'tid');
SELECT pgveil.create_role('Bench Teller');
SELECT pgveil.grant_permission('Bench Teller', o, ARRAY['list', 'view', 'edit', 'create'], 'all')
    FROM unnest(ARRAY['pgbench_branches', 'pgbench_tellers', 'pgbench_history']) o;
SELECT pgveil.grant_permission('Bench Teller', 'pgbench_accounts', ARRAY['list', 'view', 'edit'], 'department');
INSERT INTO pgveil.users (name, owner_value, department_id) VALUES ('bench', 'bench', '1');
SELECT pgveil.assign_role('bench', 'Bench Teller');
";

/// The same scope as PostgreSQL row-level security, for a role connecting directly.
const BENCH_RLS: &str = "
CREATE ROLE bench_rls LOGIN PASSWORD 'bench-rls-password';
GRANT SELECT, INSERT, UPDATE ON pgbench_accounts, pgbench_branches, pgbench_tellers,
    pgbench_history TO bench_rls;
ALTER TABLE pgbench_accounts ENABLE ROW LEVEL SECURITY;
CREATE POLICY bench_department ON pgbench_accounts TO bench_rls USING (bid = 1);
";

fn start_pgbouncer(
    pg: &EmbeddedPg,
    callgrind: bool,
) -> Option<(tempfile::TempDir, u16, std::process::Child)> {
    let bin = which("pgbouncer")?;
    let dir = tempfile::tempdir().ok()?;
    let port = free_port().ok()?;
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\ncrm = host=127.0.0.1 port={} dbname=crm\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             auth_type = scram-sha-256\nauth_file = {d}/users.txt\npool_mode = session\nmax_client_conn = 200\n\
             default_pool_size = 40\nunix_socket_dir =\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
            pg.port(),
            d = dir.path().display(),
        ),
    )
    .ok()?;
    std::fs::write(
        dir.path().join("users.txt"),
        format!(
            "\"{}\" \"{}\"\n",
            pgveil::demo::SERVICE_USER,
            pgveil::demo::SERVICE_PASSWORD
        ),
    )
    .ok()?;
    let _ = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir.path())
        .status();
    let mut runner = own_session(Path::new("runuser"));
    runner.args(["-u", "postgres", "--"]);
    let profile = callgrind.then(|| dir.path().join("cg.%p"));
    let child = launch(runner, &bin, profile.as_deref())
        .arg(&ini)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    wait_listening(port).then_some((dir, port, child))
}

/// `pgveil serve` as its own process and session, configured as `cfg` (its upstream password
/// passed in the environment, as a deployment would); returns once it accepts connections.
fn start_pgveil(
    cfg: &pgveil::config::Config,
    callgrind: bool,
) -> anyhow::Result<(tempfile::TempDir, u16, std::process::Child)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let file = dir.path().join("pgveil.toml");
    let s = &cfg.server;
    let u = &cfg.upstream;
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nsession_threads = {}\nprepare_simple_statements = {}\n\
             [upstream]\nhost = \"{}\"\nport = {}\ndatabase = \"{}\"\nuser = \"{}\"\n\
             password_env = \"PGVEIL_UPSTREAM_PASSWORD\"\npool_size = {}\n[log]\nlevel = \"warn\"\n",
            s.session_threads, s.prepare_simple_statements, u.host, u.port, u.database, u.user, u.pool_size,
        ),
    )?;
    let profile = callgrind.then(|| dir.path().join("cg.%p"));
    let program = Path::new(env!("CARGO_BIN_EXE_pgveil"));
    let mut child = launch(session_runner(), program, profile.as_deref())
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .env(
            "PGVEIL_UPSTREAM_PASSWORD",
            u.password.as_deref().unwrap_or_default(),
        )
        .stdout(std::process::Stdio::null())
        .spawn()?;
    if wait_listening(port) {
        return Ok((dir, port, child));
    }
    let _ = child.kill();
    let _ = child.wait();
    anyhow::bail!("pgveil serve did not listen on port {port} within 30 s")
}

/// Does something accept connections on `port` within 30 s?
fn wait_listening(port: u16) -> bool {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// The process that `setsid` became or started: `setsid` execs in place unless it had to fork
/// (then its one child is the program).
fn session_leader_exec(pid: u32) -> u32 {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "setsid" {
        return pid;
    }
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|c| c.split_whitespace().next()?.parse().ok())
        .unwrap_or(pid)
}

/// `program` run by `runner` (`own_session`, or `runuser` for PgBouncer), under callgrind
/// when `callgrind` names the file its profile goes to (`%p`: the process id).
fn launch(runner: Command, program: &Path, callgrind: Option<&Path>) -> Command {
    let mut c = runner;
    if let (Some(out), Some(valgrind)) = (callgrind, which("valgrind")) {
        c.arg(valgrind)
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()));
    }
    c.arg(program);
    c
}

/// `program` in a session of its own (its own autogroup), when `setsid` is installed.
fn own_session(program: &Path) -> Command {
    let mut c = session_runner();
    c.arg(program);
    c
}

/// `setsid --wait`, to which the program is appended; without `setsid`, `env`.
fn session_runner() -> Command {
    match which("setsid") {
        Some(setsid) => {
            let mut c = Command::new(setsid);
            c.arg("--wait");
            c
        }
        None => Command::new("env"),
    }
}

/// A number from the environment, if set and valid.
fn env_number<T: std::str::FromStr>(var: &str) -> Option<T> {
    std::env::var(var).ok()?.parse().ok()
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .chain([Path::new("/usr/sbin").join(name)])
        .find(|p| p.exists())
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(()); // cargo bench --list / cargo test --benches
    }
    let seconds: u32 = env_number("PGVEIL_BENCH_SECONDS").unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let pg = EmbeddedPg::start(&["max_connections = 200"])?;
    let bin = pg.bin_dir().to_owned();
    let mut cfg = pgveil::demo::config_for(&pg, "127.0.0.1:0");
    if let Some(n) = env_number("PGVEIL_BENCH_SESSION_THREADS") {
        cfg.server.session_threads = n; // e.g. to compare 1 thread with one per CPU
    }
    // upstream pooling as PgBouncer's default_pool_size below (0: every session connects)
    cfg.upstream.pool_size = env_number("PGVEIL_BENCH_POOL").unwrap_or(40);
    if let Some(on) = env_number::<u8>("PGVEIL_BENCH_PREPARE_SIMPLE") {
        cfg.server.prepare_simple_statements = on != 0; // 0: restricted simple statements as text
    }
    rt.block_on(pgveil::demo::provision(&pg, &cfg))?;
    let init = Command::new(bin.join("pgbench"))
        .args([
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            pgveil::demo::SERVICE_USER,
            "crm",
        ])
        .env("PGPASSWORD", pgveil::demo::SERVICE_PASSWORD)
        .output()?;
    anyhow::ensure!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    rt.block_on(async {
        let c = pgveil::control::connect(&cfg, "crm", None).await?;
        c.batch_execute(BENCH_POLICY).await?;
        c.execute(
            "UPDATE pgveil.users SET password_verifier = $1 WHERE name = 'bench'",
            &[&pgveil::policy::password::make_verifier(
                &pgveil::demo::password("bench"),
            )],
        )
        .await?;
        anyhow::Ok(())
    })?;
    pg.psql("crm", BENCH_RLS)?;
    let callgrind = env_number::<u8>("PGVEIL_BENCH_CALLGRIND").is_some_and(|n| n != 0);
    anyhow::ensure!(
        !callgrind || (which("valgrind").is_some() && which("callgrind_control").is_some()),
        "PGVEIL_BENCH_CALLGRIND needs valgrind (apt-get install valgrind)"
    );
    let (pgveil_dir, pgveil_port, mut pgveil) = start_pgveil(&cfg, callgrind)?;
    let pgveil_pid = session_leader_exec(pgveil.id());
    let mut targets = vec![
        Target {
            name: "direct",
            proxy_pid: None,
            base: "direct",
            port: pg.port(),
            user: pg.superuser.clone(),
            password: pg.password.clone(),
        },
        Target {
            name: "direct-rls",
            proxy_pid: None,
            base: "direct",
            port: pg.port(),
            user: "bench_rls".into(),
            password: "bench-rls-password".into(),
        },
        Target {
            name: "pgveil",
            proxy_pid: Some(pgveil_pid),
            base: "direct",
            port: pgveil_port,
            user: "admin".into(),
            password: pgveil::demo::password("admin"),
        },
        Target {
            name: "pgveil-restricted",
            proxy_pid: Some(pgveil_pid),
            base: "pgveil",
            port: pgveil_port,
            user: "bench".into(),
            password: pgveil::demo::password("bench"),
        },
    ];
    let bouncer = start_pgbouncer(&pg, callgrind);
    if let Some((dir, port, _)) = &bouncer {
        let pid = std::fs::read_to_string(dir.path().join("pgbouncer.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok());
        targets.push(Target {
            name: "pgbouncer",
            proxy_pid: pid,
            base: "direct",
            port: *port,
            user: pgveil::demo::SERVICE_USER.into(),
            password: pgveil::demo::SERVICE_PASSWORD.into(),
        });
    } else {
        println!("(pgbouncer not installed: skipping that target)");
    }
    if callgrind {
        let mut profiled: Vec<Profiled<'_>> = targets
            .iter()
            .filter(|t| t.name.starts_with("pgveil"))
            .map(|target| Profiled {
                target,
                dir: pgveil_dir.path(),
                owner: None,
            })
            .collect();
        let pgbouncer = targets.iter().find(|t| t.name == "pgbouncer");
        if let (Some((dir, _, _)), Some(target)) = (&bouncer, pgbouncer) {
            profiled.push(Profiled {
                target,
                dir: dir.path(),
                owner: Some("postgres"),
            });
        }
        count_instructions(&bin, &profiled, &WORKLOADS[..4]);
    } else {
        timed_runs(&bin, &targets, seconds);
    }
    if let Some((dir, _, mut child)) = bouncer {
        // `child` is runuser; PgBouncer itself is stopped through its pid file
        if let Ok(pid) = std::fs::read_to_string(dir.path().join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    // SIGTERM: pgveil stops accepting and ends once its (by now closed) sessions are gone
    let _ = Command::new("kill").arg(pgveil_pid.to_string()).status();
    let _ = pgveil.wait();
    Ok(())
}

/// The workloads, by name and pgbench arguments.
const WORKLOADS: [(&str, &[&str]); 5] = [
    ("select-only -M simple", &["-S", "-M", "simple"]),
    ("select-only -M extended", &["-S", "-M", "extended"]),
    ("select-only -M prepared", &["-S", "-M", "prepared"]),
    ("tpcb-like (default)", &[]),
    // a new connection (SCRAM login included) for every transaction
    ("select-only -C reconnect", &["-S", "-M", "simple", "-C"]),
];

/// A proxy running under callgrind: where its profiles go, and who may control it.
struct Profiled<'a> {
    target: &'a Target,
    dir: &'a Path,
    owner: Option<&'static str>,
}

/// `PGVEIL_BENCH_CALLGRIND=1`: the user-space instructions each proxy executes per
/// transaction, at 1 client: a 5,000-transaction run minus a 1,000-transaction one, divided by
/// 4,000, so that connection set-up (SCRAM) cancels out. Unlike time on a shared machine this
/// does not move from run to run; it does not count the kernel's work (the syscalls, which
/// are the same for pgveil and PgBouncer).
fn count_instructions(bin: &Path, profiled: &[Profiled<'_>], workloads: &[(&str, &[&str])]) {
    println!("user-space instructions per transaction (callgrind), 1 client, after a warm-up");
    println!("{:<26} {:<18} {:>12}", "workload", "target", "instr/tx");
    for (name, args) in workloads {
        for p in profiled {
            let Some(pid) = p.target.proxy_pid else {
                continue;
            };
            let _ = pgbench(bin, p.target, args, 1, Length::Transactions(200));
            let count = |n: u32| {
                callgrind_control(p, pid, "-z")?;
                pgbench(bin, p.target, args, 1, Length::Transactions(n))?;
                callgrind_control(p, pid, "-d")?;
                latest_total(p.dir, pid)
            };
            match (count(1000), count(5000)) {
                (Some(a), Some(b)) if b > a => {
                    let per_tx = (b - a) as f64 / 4000.0;
                    println!("{name:<26} {:<18} {per_tx:>12.0}", p.target.name);
                }
                _ => println!("{name:<26} {:<18} {:>12}", p.target.name, "failed"),
            }
        }
    }
}

/// Run `callgrind_control OP PID` as the profiled process's owner.
fn callgrind_control(p: &Profiled<'_>, pid: u32, op: &str) -> Option<()> {
    let mut c = match p.owner {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--", "callgrind_control"]);
            c
        }
        None => Command::new("callgrind_control"),
    };
    let ok = c
        .arg(op)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then_some(())
}

/// The instruction total of the newest complete profile dump of `pid` in `dir`.
fn latest_total(dir: &Path, pid: u32) -> Option<u64> {
    let prefix = format!("cg.{pid}.");
    for _ in 0..100 {
        let newest = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix(&prefix)?.parse::<u32>().ok()
            })
            .max();
        let total = newest.and_then(|n| {
            let text = std::fs::read_to_string(dir.join(format!("{prefix}{n}"))).ok()?;
            let line = text.lines().find(|l| l.starts_with("totals:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        });
        if total.is_some() {
            return total;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

/// The timed workloads, every target in every round, and the table.
fn timed_runs(bin: &Path, targets: &[Target], seconds: u32) {
    // one whole design by default: every target after every other as often
    let rounds: usize = env_number("PGVEIL_BENCH_ROUNDS")
        .unwrap_or_else(|| design_rounds(targets.len()))
        .max(1);
    println!("pgbench {seconds}s per run, median of {rounds} rounds, scale 1");
    println!(
        "{:<26} {:>3}  {:<18} {:>10} {:>10} {:>9} {:>9} {:>8} {:>10}",
        "workload",
        "c",
        "target",
        "tps",
        "lat ms",
        "vs direct",
        "+us/query",
        "vs base",
        "proxy us/tx"
    );
    // Optional filters, e.g. PGVEIL_BENCH_WORKLOADS=simple,tpcb PGVEIL_BENCH_CLIENTS=16
    // (a workload is named by any part of its name; a client count exactly)
    let wanted = |var: &str, item: &str, exact: bool| {
        std::env::var(var)
            .map(|v| {
                v.split(',').any(|w| {
                    if exact {
                        item == w.trim()
                    } else {
                        item.contains(w.trim())
                    }
                })
            })
            .unwrap_or(true)
    };
    for (name, args) in WORKLOADS {
        if !wanted("PGVEIL_BENCH_WORKLOADS", name, false) {
            continue;
        }
        for clients in [1u32, 16] {
            if !wanted("PGVEIL_BENCH_CLIENTS", &clients.to_string(), true) {
                continue;
            }
            // per target, per round (None: that run failed)
            let mut runs: Vec<Vec<Option<Outcome>>> = targets.iter().map(|_| Vec::new()).collect();
            for round in 0..rounds {
                for i in run_order(round, targets.len()) {
                    let length = Length::Seconds(seconds);
                    runs[i].push(pgbench(bin, &targets[i], args, clients, length));
                }
            }
            let paired = paired_ratios(targets, &runs, "pgveil", "pgbouncer");
            let medians: Vec<Option<Outcome>> = runs
                .into_iter()
                .map(|r| median(r.into_iter().flatten().collect()))
                .collect();
            let find = |n: &str| {
                targets
                    .iter()
                    .position(|t| t.name == n)
                    .and_then(|i| medians[i].as_ref())
            };
            for (t, o) in targets.iter().zip(&medians) {
                let Some(o) = o else { continue };
                let (ratio, added) = find("direct").map_or((f64::NAN, f64::NAN), |d| {
                    (o.tps / d.tps, (o.latency_ms - d.latency_ms) * 1000.0)
                });
                let vs_base = find(t.base).map_or(f64::NAN, |b| o.tps / b.tps);
                let cpu = o
                    .proxy_cpu_us
                    .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}"));
                println!(
                    "{name:<26} {clients:>3}  {:<18} {:>10.0} {:>10.3} {:>9.3} {:>9.0} {:>8.3} {cpu:>10}",
                    t.name, o.tps, o.latency_ms, ratio, added, vs_base
                );
            }
            if let Some(p) = paired {
                let interval = p.interval.map_or_else(String::new, |(lo, hi)| {
                    format!(", 95% interval {lo:.3} to {hi:.3}")
                });
                println!(
                    "{:<31} pgveil/pgbouncer TPS round by round: {} (median {:.3}{interval})",
                    "", p.each, p.median
                );
            }
        }
    }
}
