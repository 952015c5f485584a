//! `vmxray completions` and `vmxray man`: the scripts are valid for their shell and complete
//! every subcommand and flag that `--help` lists; the man pages render without groff warnings.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use vmxray_events::test_util::skip;

fn vmxray(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmxray")).args(args).output().expect("runs vmxray")
}

fn stdout(args: &[&str]) -> String {
    let out = vmxray(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "vmxray {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The subcommands as `vmxray --help` lists them (not from the clap definitions, so that the
/// completion script is checked against what a user sees).
fn subcommands() -> Vec<String> {
    let help = stdout(&["--help"]);
    let listed = help
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("a Commands: section");
    let names: Vec<String> = listed
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 12, "{names:?}");
    names
}

/// The long flags of a subcommand as its `--help` lists them.
fn long_flags(sub: &str) -> BTreeSet<String> {
    stdout(&[sub, "--help"])
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned())
        .collect()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmxray-docs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn bash_completion_is_valid_and_complete() {
    let script = stdout(&["completions", "bash"]);
    let dir = TempDir::new("bash");
    let file = dir.path().join("vmxray.bash");
    std::fs::write(&file, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().expect("bash runs");
    assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));

    for sub in subcommands() {
        assert!(script.contains(&format!("vmxray,{sub})")), "no completion for {sub}");
        for flag in long_flags(&sub) {
            assert!(script.contains(&flag), "{sub} {flag} is not completed");
        }
    }

    // And bash really completes with it: `vmxray sc<TAB>` → scan, `vmxray scan --sh<TAB>` →
    // --shard, `vmxray completions z<TAB>` → zsh.
    let complete = |words: &str| -> String {
        let program = format!(
            "source {file}\nCOMP_WORDS=({words})\nCOMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
             COMP_LINE=\"${{COMP_WORDS[*]}}\"\nCOMP_POINT=${{#COMP_LINE}}\n\
             _vmxray vmxray \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file = file.display()
        );
        let out = Command::new("bash").args(["-c", &program]).output().expect("bash runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let words = |s: &str| s.lines().map(str::to_owned).collect::<BTreeSet<_>>();
    assert_eq!(words(&complete("vmxray sc")), BTreeSet::from(["scan".to_owned()]));
    assert!(words(&complete("vmxray scan --sh")).contains("--shard"));
    assert_eq!(words(&complete("vmxray completions z")), BTreeSet::from(["zsh".to_owned()]));
}

#[test]
fn every_shell_gets_a_script_naming_every_subcommand() {
    let subs = subcommands();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout(&["completions", shell]);
        for sub in &subs {
            assert!(script.contains(sub.as_str()), "{shell}: no {sub}");
        }
        // fish spells a long flag `-l permissive`.
        assert!(script.contains("permissive"), "{shell}: no --permissive");
    }
    // Shells that are installed check their own script's syntax.
    for (shell, check) in [("zsh", &["-n"][..]), ("fish", &["--no-execute"][..])] {
        if !have(shell) {
            continue;
        }
        let dir = TempDir::new(shell);
        let file = dir.path().join("script");
        std::fs::write(&file, stdout(&["completions", shell])).unwrap();
        let out = Command::new(shell).args(check).arg(&file).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let bad = vmxray(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn man_pages_render_without_warnings() {
    let dir = TempDir::new("man");
    let out = vmxray(&["man", "--out", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let mut expected: Vec<String> = subcommands().iter().map(|s| format!("vmxray-{s}.1")).collect();
    expected.push("vmxray.1".to_owned());
    expected.sort();
    assert_eq!(pages, expected);

    // The stdout page of a subcommand is the file's page.
    let scan = stdout(&["man", "scan"]);
    assert_eq!(scan, std::fs::read_to_string(dir.path().join("vmxray-scan.1")).unwrap());
    assert!(scan.contains(".SH SYNOPSIS") && scan.contains("shard"), "{scan}");
    assert_eq!(vmxray(&["man", "no-such-command"]).status.code(), Some(2));

    if !have("groff") {
        skip("groff is not installed (scripts/setup.sh installs groff-base)");
        return;
    }
    for page in &pages {
        let path = dir.path().join(page);
        // -k: preconv for the UTF-8 text (as man does); -ww: every warning; -z: only diagnostics.
        let check = Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .expect("groff runs");
        let warnings = String::from_utf8_lossy(&check.stderr);
        assert!(check.status.success() && warnings.is_empty(), "{page}: {warnings}");
        let text = Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-P-cbou"])
            .arg(&path)
            .output()
            .expect("groff runs");
        let text = String::from_utf8_lossy(&text.stdout);
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS"] {
            assert!(text.contains(section), "{page}: no {section} in\n{text}");
        }
    }
    let main = std::fs::read_to_string(dir.path().join("vmxray.1")).unwrap();
    for sub in subcommands() {
        assert!(main.contains(&format!("vmxray\\-{sub}(1)")), "vmxray.1 does not list {sub}");
    }
    if have("man") {
        let out = Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(dir.path().join("vmxray-scan.1"))
            .env("MANWIDTH", "100")
            .output()
            .expect("man runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("--shard"), "{text}");
    }
}
