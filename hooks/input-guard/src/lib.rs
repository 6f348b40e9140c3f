//! `input-guard`: an input hook (world `input-hook`, `check-input`) that refuses bytes bound
//! for a job's stdin or terminal when they contain the config's `needle` (default `rm -rf`),
//! so what a pre-hook would refuse as a command cannot be typed into an interactive shell
//! instead. It also refuses any input to a job whose label `interactive` is `no`.
//!
//! With `mode = "random"` it is the hook boundary's fuzzer for this stage instead: each call
//! allows or denies with a reason drawn from the data (and `seed`): empty, at or just past the
//! host's 4 KiB bound, or up to 4 MiB, with NUL and every Unicode plane.

wit_bindgen::generate!({
    path: "../../wit",
    world: "input-hook",
});

use ccx::hooks::host;

struct InputGuard;

/// xorshift64* seeded by FNV-1a of the data and `seed`.
fn random(data: &[u8], seed: u64) -> InputDecision {
    let mut x: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in data {
        x = (x ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    x |= 1;
    let mut next = move |n: u64| {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    };
    let len = match next(6) {
        0 => return InputDecision::Allow,
        1 => 0,
        2 => 4096,
        3 => 4097,
        4 => next(64) as usize,
        _ => next((4 << 20) + 1) as usize,
    };
    const POOL: &[char] = &['a', '\0', '\n', '"', 'é', '\u{ffff}', '😀', '\u{10fffd}'];
    let mut reason = String::with_capacity(len + 4);
    while reason.len() < len {
        reason.push(POOL[next(POOL.len() as u64) as usize]);
    }
    InputDecision::Deny(reason)
}

impl Guest for InputGuard {
    fn check_input(request: ExecRequest, data: Vec<u8>) -> InputDecision {
        let config = host::config();
        let get = |key: &str| config.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        if get("mode").as_deref() == Some("random") {
            let seed = get("seed").and_then(|s| s.parse().ok()).unwrap_or(0);
            return random(&data, seed);
        }
        if request
            .labels
            .iter()
            .any(|(k, v)| k == "interactive" && v == "no")
        {
            return InputDecision::Deny("this job takes no input (label interactive=no)".into());
        }
        let needle = host::config()
            .into_iter()
            .find(|(k, _)| k == "needle")
            .map(|(_, v)| v)
            .unwrap_or_else(|| "rm -rf".into());
        let text = String::from_utf8_lossy(&data);
        if text.contains(&needle) {
            InputDecision::Deny(format!("input contains `{needle}`"))
        } else {
            InputDecision::Allow
        }
    }
}

export!(InputGuard);
