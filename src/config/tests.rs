//! Unit tests of config parsing and validation.
use super::*;

#[test]
fn empty_file_is_the_default() {
    let c = Config::parse("", None).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8003");
    assert_eq!(c.execution.max_queue, 16);
}

#[test]
fn unknown_keys_are_named() {
    let err = Config::parse("[server]\nlisen = \"x\"\n", None).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("lisen"), "{msg}");
    let err = Config::parse("[executon]\n", None).unwrap_err();
    assert!(format!("{err:#}").contains("executon"));
}

#[test]
fn hooks_are_read_in_order_with_paths_relative_to_the_file() {
    let text = r#"
        [[hooks]]
        name = "a"
        path = "hooks/a.wasm"
        config = { patterns = "rm -rf /", max = 3, strict = true }
        [[hooks]]
        name = "b"
        path = "/abs/b.wasm"
        enabled = false
        on_failure = "deny"
        fuel = 10
        timeout_ms = 50
        memory_mb = 8
    "#;
    let c = Config::parse(text, Some(Path::new("/etc/ccx/ccx.toml"))).unwrap();
    assert_eq!(c.hooks.len(), 2);
    assert_eq!(c.hooks[0].path, Path::new("/etc/ccx/hooks/a.wasm"));
    assert_eq!(
        c.hooks[0].config,
        vec![
            ("max".to_string(), "3".to_string()),
            ("patterns".into(), "rm -rf /".into()),
            ("strict".into(), "true".into())
        ]
    );
    assert!(c.hooks[0].enabled);
    assert!(!c.hooks[1].enabled);
    assert_eq!(c.hooks[1].on_failure, OnFailure::Deny);
    assert_eq!(
        (c.hooks[1].fuel, c.hooks[1].timeout_ms, c.hooks[1].memory_mb),
        (10, 50, 8)
    );
}

#[test]
fn bad_hooks_are_named() {
    let dup = "[[hooks]]\nname = \"a\"\npath = \"x\"\n[[hooks]]\nname = \"a\"\npath = \"y\"\n";
    assert!(format!("{:#}", Config::parse(dup, None).unwrap_err()).contains("used twice"));
    let bad = "[[hooks]]\nname = \"a\"\npath = \"x\"\ntimeout_ms = 0\n";
    assert!(format!("{:#}", Config::parse(bad, None).unwrap_err()).contains("timeout_ms"));
    let bad = "[[hooks]]\nname = \"a\"\npath = \"x\"\non_failure = \"maybe\"\n";
    assert!(format!("{:#}", Config::parse(bad, None).unwrap_err()).contains("maybe"));
    let bad = "[[hooks]]\nname = \"a\"\npath = \"x\"\nfule = 3\n";
    assert!(format!("{:#}", Config::parse(bad, None).unwrap_err()).contains("fule"));
}

#[test]
fn mcp_section_is_strict_and_validated() {
    let c = Config::parse("", None).unwrap();
    assert_eq!(c.server.mcp.max_output_bytes, 32 * 1024);
    assert_eq!(c.server.mcp.progress_interval, Duration::from_secs(1));
    let c = Config::parse(
        "[mcp]\nmax_output_bytes = 4096\nprogress_interval = 0.25\n",
        None,
    )
    .unwrap();
    assert_eq!(c.server.mcp.max_output_bytes, 4096);
    assert_eq!(c.server.mcp.progress_interval, Duration::from_millis(250));
    let err = Config::parse("[mcp]\nmax_output_bytes = 10\n", None).unwrap_err();
    assert!(format!("{err:#}").contains("mcp.max_output_bytes"));
    let err = Config::parse("[mcp]\nprogress_interval = 0\n", None).unwrap_err();
    assert!(format!("{err:#}").contains("mcp.progress_interval"));
    let err = Config::parse("[mcp]\nmax_output = 1\n", None).unwrap_err();
    assert!(format!("{err:#}").contains("max_output"));
}

#[test]
fn bad_values_name_the_key() {
    let err = Config::parse("[execution]\nkill_grace = -1\n", None).unwrap_err();
    assert!(format!("{err:#}").contains("execution.kill_grace"));
    let err = Config::parse("[server]\nlisten = \"nowhere\"\n", None).unwrap_err();
    assert!(format!("{err:#}").contains("server.listen"));
    let err = Config::parse("[server]\nmax_sessions = \"ten\"\n", None).unwrap_err();
    assert!(format!("{err:#}").contains("max_sessions"));
}
