//! `ccx hooks new`: writes a hook project that builds out of the box, from templates built
//! into the binary (`templates/`), the WIT contract as shipped (`wit/hooks.wit`) and the same
//! pinned toolchain versions the example hooks in `hooks/` use (their lockfiles are embedded
//! too), so a scaffolded hook builds with the versions ccx is tested with.
//!
//! Templates are plain text with `{{placeholder}}`s and stage blocks: the lines between a line
//! `@@pre` (or `@@post`) and a line `@@end` are kept only when the hook has that stage.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The language of a new hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with wit-bindgen, built with cargo for wasm32-wasip2.
    Rust,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-js.
    Js,
}

/// Which of the two hook points a new hook exports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StageChoice {
    /// `pre-execute` only: allow, deny or modify commands before they run.
    Pre,
    /// `post-execute` only: annotate and judge finished jobs.
    Post,
    /// Both.
    #[default]
    Both,
}

impl StageChoice {
    /// The WIT world the hook targets.
    pub fn world(self) -> &'static str {
        match self {
            StageChoice::Pre => "pre-hook",
            StageChoice::Post => "post-hook",
            StageChoice::Both => "hook",
        }
    }

    fn has_pre(self) -> bool {
        self != StageChoice::Post
    }

    fn has_post(self) -> bool {
        self != StageChoice::Pre
    }
}

const WIT: &str = include_str!("../wit/hooks.wit");
const README: &str = include_str!("../templates/common/README.md");
const GITIGNORE: &str = include_str!("../templates/common/gitignore");
const REQUEST: &str = include_str!("../templates/common/request.json");
const RESULT: &str = include_str!("../templates/common/result.json");

const RUST_CARGO: &str = include_str!("../templates/rust/Cargo.toml");
const RUST_LIB: &str = include_str!("../templates/rust/lib.rs");
const RUST_BUILD: &str = include_str!("../templates/rust/build.sh");
/// The example hooks' lockfile: cargo drops the packages a new hook does not use and keeps
/// the versions of those it does.
const RUST_LOCK: &str = include_str!("../hooks/Cargo.lock");

const PY_APP: &str = include_str!("../templates/python/app.py");
const PY_BUILD: &str = include_str!("../templates/python/build.sh");
const PY_REQUIREMENTS: &str = include_str!("../hooks/requirements.txt");

const JS_HOOK: &str = include_str!("../templates/js/hook.js");
const JS_BUILD: &str = include_str!("../templates/js/build.sh");
const JS_BUILD_MJS: &str = include_str!("../hooks/secret-scan/build.mjs");
const JS_PACKAGE: &str = include_str!("../hooks/secret-scan/package.json");
const JS_LOCK: &str = include_str!("../hooks/secret-scan/package-lock.json");
/// The package name in the embedded JS lockfile, replaced by the new hook's.
const JS_LOCK_NAME: &str = "ccx-hook-secret-scan";

/// Creates `dest/NAME/` with the hook's source, `wit/hooks.wit`, a `build.sh` that installs
/// its toolchain (pinned) and prints the built component's path, sample inputs for
/// `ccx hooks run` (`request.json`, `result.json`) and a README. Returns the new directory.
///
/// `name` must be lowercase letters, digits and dashes, starting with a letter; the
/// directory must not exist yet.
pub fn scaffold(
    name: &str,
    lang: Lang,
    stage: StageChoice,
    dest: &Path,
) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let dir = dest.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let files = render(name, lang, stage);
    std::fs::create_dir_all(dir.join("wit"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    for (path, text, executable) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot make {} executable", path.display()))?;
        }
    }
    Ok(dir)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!(
            "`{name}` is not a valid hook name: use lowercase letters, digits and dashes, \
             starting with a letter (at most 64)"
        );
    }
    Ok(())
}

/// The project's files: (relative path, contents, executable).
fn render(name: &str, lang: Lang, stage: StageChoice) -> Vec<(String, String, bool)> {
    let world = stage.world();
    let stages = match stage {
        StageChoice::Pre => "pre-hook (runs before commands)",
        StageChoice::Post => "post-hook (runs after commands)",
        StageChoice::Both => "hook (runs before and after commands)",
    };
    let try_pre = "ccx hooks run {{name}}.wasm --pre @request.json --config deny=--force";
    let try_post = "ccx hooks run {{name}}.wasm --post @result.json --config fail_on_error=true";
    let mut try_lines = Vec::new();
    if stage.has_pre() {
        try_lines.push(try_pre);
    }
    if stage.has_post() {
        try_lines.push(try_post);
    }
    let try_block = format!("\n```sh\n{}\n```\n", try_lines.join("\n"));
    let config_hint = match stage {
        StageChoice::Pre => r#"deny = "--force""#,
        StageChoice::Post => r#"fail_on_error = true"#,
        StageChoice::Both => r#"deny = "--force", fail_on_error = true"#,
    };
    let (language, toolchain) = match lang {
        Lang::Rust => ("Rust", "the wasm32-wasip2 rustup target"),
        Lang::Python => ("Python", "componentize-py from PyPI"),
        Lang::Js => ("JavaScript", "componentize-js from npm"),
    };
    let vars = |text: &str| {
        let text = text
            .replace("{{try}}", &try_block)
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{world}}", world)
            .replace("{{stages}}", stages)
            .replace("{{language}}", language)
            .replace("{{toolchain}}", toolchain)
            .replace("{{config_hint}}", config_hint)
            .replace("{{path_hint}}", &format!("path/to/{name}"));
        stage_blocks(&text, stage)
    };

    let mut files = vec![
        ("wit/hooks.wit".to_string(), WIT.to_string(), false),
        ("README.md".into(), vars(README), false),
        (".gitignore".into(), vars(GITIGNORE), false),
    ];
    if stage.has_pre() {
        files.push(("request.json".into(), REQUEST.into(), false));
    }
    if stage.has_post() {
        files.push(("result.json".into(), RESULT.into(), false));
    }
    match lang {
        Lang::Rust => {
            files.push(("Cargo.toml".into(), vars(RUST_CARGO), false));
            files.push(("Cargo.lock".into(), RUST_LOCK.into(), false));
            files.push(("src/lib.rs".into(), vars(RUST_LIB), false));
            files.push(("build.sh".into(), vars(RUST_BUILD), true));
        }
        Lang::Python => {
            files.push(("app.py".into(), vars(PY_APP), false));
            files.push(("requirements.txt".into(), PY_REQUIREMENTS.into(), false));
            files.push(("build.sh".into(), vars(PY_BUILD), true));
        }
        Lang::Js => {
            let package = format!("ccx-hook-{name}");
            files.push((format!("{name}.js"), vars(JS_HOOK), false));
            files.push(("package.json".into(), js_package(&package), false));
            files.push((
                "package-lock.json".into(),
                JS_LOCK.replace(JS_LOCK_NAME, &package),
                false,
            ));
            files.push(("build.mjs".into(), JS_BUILD_MJS.into(), false));
            files.push(("build.sh".into(), vars(JS_BUILD), true));
        }
    }
    files
}

/// The example JS hook's package.json with the new hook's name: the same pinned tools.
fn js_package(package: &str) -> String {
    let mut json: serde_json::Value =
        serde_json::from_str(JS_PACKAGE).expect("hooks/secret-scan/package.json is valid JSON");
    json["name"] = package.into();
    json["description"] = "A ccx hook".into();
    json["scripts"] = serde_json::json!({ "build": "./build.sh" });
    let mut text = serde_json::to_string_pretty(&json).expect("JSON serializes");
    text.push('\n');
    text
}

/// Keeps the lines of `@@pre` / `@@post` … `@@end` blocks that `stage` has, drops the rest
/// and the marker lines.
fn stage_blocks(text: &str, stage: StageChoice) -> String {
    let mut out = String::with_capacity(text.len());
    let mut keep = true;
    for line in text.split_inclusive('\n') {
        match line.trim() {
            "@@pre" => keep = stage.has_pre(),
            "@@post" => keep = stage.has_post(),
            "@@end" => keep = true,
            _ if keep => out.push_str(line),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_and_stage_renders_without_leftover_markers() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            for stage in [StageChoice::Pre, StageChoice::Post, StageChoice::Both] {
                for (path, text, _) in render("my-hook", lang, stage) {
                    assert!(!text.contains("{{"), "{lang:?}/{stage:?} {path}:\n{text}");
                    assert!(!text.contains("@@"), "{lang:?}/{stage:?} {path}:\n{text}");
                    let source =
                        path.ends_with(".rs") || path.ends_with(".py") || path.ends_with(".js");
                    if source {
                        let pre = ["pre_execute", "preExecute"]
                            .iter()
                            .any(|f| text.contains(f));
                        let post = ["post_execute", "postExecute"]
                            .iter()
                            .any(|f| text.contains(f));
                        assert_eq!((pre, post), (stage.has_pre(), stage.has_post()), "{path}");
                    }
                }
            }
        }
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "My-Hook", "-x", "x-", "a b", "../x", "1x"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for good in ["x", "deny-dangerous", "hook2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn the_js_lockfile_names_the_new_package() {
        let files = render("my-hook", Lang::Js, StageChoice::Pre);
        let lock = &files.iter().find(|f| f.0 == "package-lock.json").unwrap().1;
        let package = &files.iter().find(|f| f.0 == "package.json").unwrap().1;
        assert!(lock.contains("\"name\": \"ccx-hook-my-hook\""));
        assert!(!lock.contains(JS_LOCK_NAME));
        assert!(package.contains("\"@bytecodealliance/componentize-js\": \"0.23.0\""));
    }
}
