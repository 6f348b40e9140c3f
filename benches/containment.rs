//! Containment benchmark: `cargo bench --bench containment`.
//!
//! Two release `ccx serve` processes, the job registry off in both, one containing each job in
//! a cgroup v2 of its own (made, joined through `CLONE_INTO_CGROUP`, killed and removed per
//! job) and one in a process group with the server as child subreaper, measured in
//! alternating rounds of `execute "true"` round trips: the difference is the cgroup's cost
//! per job (target: under 0.3 ms). Also the server's CPU time per job in each mode, from
//! `/proc/<pid>/stat`. Then, in this process, the cgroup's own steps beside a plain spawn:
//! `/bin/true` started (clone3) and awaited, alone and with its cgroup made, joined
//! (`CLONE_INTO_CGROUP`) and removed. Prints a Markdown table for the README.
//! `CCX_BENCH_QUICK=1` shrinks it.

#[path = "support/common.rs"]
mod common;
#[path = "../tests/util.rs"]
mod util;

use common::*;

fn main() {
    let quick = quick();
    let rt = multi_thread_runtime();
    let tmp = util::scratch();
    let cfg =
        |mode: &str| format!("[execution]\ncontainment = \"{mode}\"\n[state]\nenabled = false\n");
    let (mut cg, cg_url, _) = start_server(&folder(tmp.path(), "cgroup"), "cgroup", &cfg("cgroup"));
    let (mut pg, pg_url, _) = start_server(&folder(tmp.path(), "pg"), "pg", &cfg("process-group"));
    let (rounds, per) = if quick { (4, 50) } else { (20, 200) };
    let (mut on_cg, mut on_pg) = (Vec::new(), Vec::new());
    let (cpu_cg, cpu_pg) = (cpu_time(cg.id()), cpu_time(pg.id()));
    rt.block_on(async {
        for _ in 0..rounds {
            on_pg.extend(round_trips(&pg_url, per).await);
            on_cg.extend(round_trips(&cg_url, per).await);
        }
    });
    let n = (rounds * per) as u32;
    let (cpu_cg, cpu_pg) = (
        (cpu_time(cg.id()) - cpu_cg) / n,
        (cpu_time(pg.id()) - cpu_pg) / n,
    );
    for c in [&mut cg, &mut pg] {
        stop(c);
    }
    on_cg.sort();
    on_pg.sort();
    let (p50_cg, p50_pg) = (pct(&on_cg, 50), pct(&on_pg, 50));
    println!("| measurement | result |\n|---|---|");
    println!(
        "| `execute \"true\"` round trip, process group + subreaper ({n} runs) | p50 {} / p99 {} |",
        us(p50_pg),
        us(pct(&on_pg, 99))
    );
    println!(
        "| same, a cgroup per job ({n} runs) | p50 {} / p99 {} ({:+.0} µs at p50) |",
        us(p50_cg),
        us(pct(&on_cg, 99)),
        (p50_cg.as_secs_f64() - p50_pg.as_secs_f64()) * 1e6
    );
    println!(
        "| server CPU time per job, process group / cgroup | {} / {} |",
        us(cpu_pg),
        us(cpu_cg)
    );
    let spawns = if quick { 200 } else { 2000 };
    let (plain, with_cgroup) = rt.block_on(spawn_costs(spawns));
    println!(
        "| `/bin/true` spawned and awaited, p50 of {spawns}: plain / with its cgroup made, joined and removed | {} / {} ({:+.0} µs) |",
        us(plain),
        us(with_cgroup),
        (with_cgroup.as_secs_f64() - plain.as_secs_f64()) * 1e6
    );
}

/// p50 of spawning and awaiting `/bin/true`, plain and inside a fresh cgroup per spawn,
/// alternating.
async fn spawn_costs(n: usize) -> (std::time::Duration, std::time::Duration) {
    use ccx::containment::cgroup::CgroupRoot;
    use ccx::jobs::spawn::{Spawn, spawn};
    use std::ffi::CString;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};
    let root = CgroupRoot::open(None).expect("a cgroup v2 hierarchy");
    let program = CString::new("/bin/true").unwrap();
    let argv = [program.clone()];
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    let run = async |cgroup: Option<std::os::fd::BorrowedFd<'_>>| {
        let child = spawn(&Spawn {
            program: &program,
            argv: &argv,
            envp: &[],
            cwd: None,
            stdio: [null.as_fd(), null.as_fd(), null.as_fd()],
            cgroup,
            new_session: false,
            controlling_tty: false,
            rlimits: &[],
            join: &[],
        })
        .unwrap();
        assert!(child.wait().await.unwrap().0.success());
    };
    let (mut plain, mut with): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for i in 0..n {
        let t = Instant::now();
        run(None).await;
        plain.push(t.elapsed());
        let t = Instant::now();
        let job = root.create_job(&format!("{i:08x}")).unwrap();
        run(Some(job.dir_fd())).await;
        job.remove(Duration::from_secs(5)).await.unwrap();
        with.push(t.elapsed());
    }
    plain.sort();
    with.sort();
    (pct(&plain, 50), pct(&with, 50))
}
