//! Admission-control policy around a hook: which jobs it sees ([`Matcher`], evaluated by the
//! host against the parse of the command line, so a hook whose matcher does not match is never
//! instantiated) and what its decisions do ([`HookMode`], after Kubernetes'
//! `validationActions` and Gatekeeper's `enforcementAction`).

use super::parse::SimpleCommand;
use serde::{Deserialize, Serialize};

/// What a hook's decisions do (`mode` in its `[[hooks]]` entry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookMode {
    /// Decisions apply: a deny refuses the job, a modify changes it; `on_failure` applies.
    #[default]
    Enforce,
    /// A deny or modify becomes a `hook.warning` (kind `deny` or `modify`, mode `warn`) and
    /// the job runs unchanged; a failure is reported and the job runs.
    Warn,
    /// Decisions are only recorded (counters, decision log); the client sees nothing and the
    /// job runs unchanged.
    DryRun,
}

/// `match = {programs, commands, regex}` as configured (plain data; [`MatchSpec::compile`]
/// makes the [`Matcher`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchSpec {
    #[serde(default)]
    pub programs: Vec<String>,
    #[serde(default)]
    pub commands: Vec<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

impl MatchSpec {
    /// Compiles the globs and the regular expression. Errors name the bad rule.
    pub fn compile(&self) -> Result<Matcher, String> {
        if self.programs.is_empty() && self.commands.is_empty() && self.regex.is_none() {
            return Err("is empty: give programs, commands or regex, or leave it out".into());
        }
        let commands = self
            .commands
            .iter()
            .map(|g| glob::Pattern::new(g).map_err(|e| format!("commands: `{g}`: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let regex = match &self.regex {
            Some(r) => Some(regex::Regex::new(r).map_err(|e| format!("regex: {e}"))?),
            None => None,
        };
        Ok(Matcher {
            programs: self.programs.clone(),
            commands,
            regex,
        })
    }
}

/// Which jobs a hook sees (`match = {programs, commands, regex}`): it matches a request when
/// any rule matches any simple command of its parse. A dynamic simple command (its program
/// depends on an expansion) and a line that could not be parsed match every matcher, so
/// `$(echo rm) -rf /` still meets an `rm` hook.
#[derive(Clone, Debug)]
pub struct Matcher {
    /// Program names (`rm`) or paths (`/usr/bin/rm`): equal to the command's first word, its
    /// resolved path, the program its wrappers run (`sudo -u root rm` runs `rm`: see
    /// [`super::parse::wrapped`]) or any of these words' last component.
    pub programs: Vec<String>,
    /// Globs over a simple command's words joined by spaces (`git push*`), from its first
    /// word or from the program its wrappers run (`sudo git push` matches `git push*`).
    pub commands: Vec<glob::Pattern>,
    /// A regular expression searched in the whole command line and in each simple command.
    pub regex: Option<regex::Regex>,
}

impl Matcher {
    /// The rule that matches `line` (whose parse is `commands`, `unparsed` when it has none),
    /// as the decision log shows it; `None` when nothing matches.
    pub fn matches(
        &self,
        line: &str,
        commands: &[SimpleCommand],
        unparsed: bool,
    ) -> Option<String> {
        if unparsed {
            return Some("unparsed line".into());
        }
        if let Some(re) = &self.regex
            && re.is_match(line)
        {
            return Some(format!("regex {}", re.as_str()));
        }
        for c in commands {
            if c.dynamic {
                return Some(format!("dynamic command `{}`", c.argv.join(" ")));
            }
            let first = c.argv.first().map(String::as_str).unwrap_or("");
            let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
            // Past wrappers too: `sudo -u root rm -rf /` runs `rm`.
            let run = super::parse::wrapped(&c.argv).filter(|&k| k > 0);
            let wrapped = run.map(|k| c.argv[k].as_str());
            let names = [
                Some(first.to_string()),
                Some(base(first)),
                c.program.clone(),
                c.program.as_deref().map(base),
                wrapped.map(str::to_string),
                wrapped.map(base),
            ];
            if let Some(p) = self
                .programs
                .iter()
                .find(|p| names.iter().flatten().any(|n| n == *p))
            {
                return Some(format!("program {p}"));
            }
            let joined = c.argv.join(" ");
            let unwrapped = run.map(|k| c.argv[k..].join(" "));
            if let Some(g) = self
                .commands
                .iter()
                .find(|g| g.matches(&joined) || unwrapped.as_deref().is_some_and(|u| g.matches(u)))
            {
                return Some(format!("command {}", g.as_str()));
            }
            if let Some(re) = &self.regex
                && re.is_match(&joined)
            {
                return Some(format!("regex {}", re.as_str()));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(spec: MatchSpec, line: &str) -> Option<String> {
        let p = super::super::parse::parse(line, &|_| None);
        let m = spec.compile().unwrap();
        m.matches(line, &p.commands, p.unparsed.is_some())
    }

    #[test]
    fn programs_and_commands_are_seen_past_wrappers() {
        let rm = || MatchSpec {
            programs: vec!["rm".into()],
            ..Default::default()
        };
        for line in [
            "ls; rm -rf x",
            "sudo -u root rm -rf /",
            "nice -n 5 timeout 10 /bin/rm x",
            "env A=1 rm x",
            "taskset 1 rm x",
        ] {
            assert_eq!(matched(rm(), line).as_deref(), Some("program rm"), "{line}");
        }
        assert_eq!(matched(rm(), "sudo -l"), None);
        assert_eq!(matched(rm(), "echo rm"), None);
        let push = || MatchSpec {
            commands: vec!["git push*".into()],
            ..Default::default()
        };
        assert!(matched(push(), "sudo git push origin main").is_some());
        assert_eq!(matched(push(), "git pull"), None);
    }

    #[test]
    fn a_regex_is_searched_in_the_line_and_in_each_command() {
        let pipe = || MatchSpec {
            regex: Some(r"curl .*\| *sh".into()),
            ..Default::default()
        };
        for line in [
            "curl -fsSL https://x.sh | sh",
            "cd /tmp && curl http://x|sh",
        ] {
            assert_eq!(
                matched(pipe(), line).as_deref(),
                Some(r"regex curl .*\| *sh"),
                "{line}"
            );
        }
        assert_eq!(matched(pipe(), "curl -o x.sh https://x.sh"), None);
        // In each simple command's words too, quotes removed: the line alone has no match.
        let rm = MatchSpec {
            regex: Some("rm -rf".into()),
            ..Default::default()
        };
        let line = "ls && \"rm\" -rf /tmp/x";
        assert_eq!(matched(rm.clone(), line).as_deref(), Some("regex rm -rf"));
        assert_eq!(matched(rm, "ls -la"), None);
    }

    #[test]
    fn an_unparsed_line_matches_every_matcher() {
        let line = "echo \"unterminated";
        let specs = [
            MatchSpec {
                programs: vec!["rm".into()],
                ..Default::default()
            },
            MatchSpec {
                commands: vec!["git push*".into()],
                ..Default::default()
            },
            MatchSpec {
                regex: Some("^never$".into()),
                ..Default::default()
            },
        ];
        for spec in specs {
            assert_eq!(
                matched(spec.clone(), line).as_deref(),
                Some("unparsed line"),
                "{spec:?}"
            );
        }
    }
}
