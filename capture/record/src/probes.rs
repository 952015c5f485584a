//! Installing the dynamic probes of `vmxray record --profile vmcs` (what their events mean is
//! `vmxray_events::vmcs::probe`).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use vmxray_events::vmcs::probe::{LOAD_CR3, LOAD_MMU_PGD_EPT, LOAD_MMU_PGD_SHADOW, NESTED_VMEXIT};

/// Which probe syntax the kernel takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeSyntax {
    /// `f:GRP/EVENT SYM ARG…` with BTF argument names (fprobetrace.rst).
    FprobeBtf,
    /// `p:GRP/EVENT SYM NAME=$argN:TYPE…` (kprobetrace.rst).
    Kprobe,
}

/// One probe: its event name, the definition line and the removal line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeLine {
    /// The event name (without group).
    pub event: String,
    /// The line that defines it.
    pub define: String,
    /// The line that removes it (`-:GRP/EVENT`).
    pub remove: String,
}

/// The group of a recorder process.
pub fn group_for(pid: u32) -> String {
    format!("vmxray_{pid}")
}

/// The probe definitions for a kernel.
pub fn definitions(syntax: ProbeSyntax, group: &str, l0_ept: bool) -> Vec<ProbeLine> {
    let pgd = if l0_ept { LOAD_MMU_PGD_EPT } else { LOAD_MMU_PGD_SHADOW };
    let probes: [(&str, &str, &str, &str); 3] = [
        (
            LOAD_CR3,
            "nested_vmx_load_cr3",
            "cr3=cr3:x64 nested_ept=nested_ept:u8 hflags=vcpu->arch.hflags:x32",
            "cr3=$arg2:x64 nested_ept=$arg3:u8",
        ),
        (
            pgd,
            "vmx_load_mmu_pgd",
            "root_hpa=root_hpa:x64 root_level=root_level:s32 hflags=vcpu->arch.hflags:x32",
            "root_hpa=$arg2:x64 root_level=$arg3:s32",
        ),
        (
            NESTED_VMEXIT,
            "nested_vmx_vmexit",
            "reason=vm_exit_reason:x32 intr_info=exit_intr_info:x32 qual=exit_qualification:x64",
            "reason=$arg2:x32 intr_info=$arg3:x32 qual=$arg4:x64",
        ),
    ];
    probes
        .iter()
        .map(|(event, sym, btf, regs)| {
            let define = match syntax {
                ProbeSyntax::FprobeBtf => format!("f:{group}/{event} {sym} {btf}"),
                ProbeSyntax::Kprobe => format!("p:{group}/{event} {sym} {regs}"),
            };
            ProbeLine { event: (*event).into(), define, remove: format!("-:{group}/{event}") }
        })
        .collect()
}

/// The removal lines for probes a killed recorder left behind: every `vmxray_<pid>` group in
/// the `dynamic_events`/`kprobe_events` text whose process `alive` says is gone (the recorder
/// removes them before defining its own, as it does with stale instances).
pub fn stale_removals(listing: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for line in listing.lines() {
        // `f:vmxray_123/vmcs_load_cr3 nested_vmx_load_cr3 …`
        let Some(name) =
            line.split_whitespace().next().and_then(|h| h.split_once(':')).map(|(_, n)| n)
        else {
            continue;
        };
        let Some((group, event)) = name.split_once('/') else { continue };
        let Some(pid) = group.strip_prefix("vmxray_").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !alive(pid) {
            out.push(format!("-:{group}/{event}"));
        }
    }
    out
}

/// What the kernel offers for dynamic probes.
///
/// The files alone do not tell: `dynamic_events` exists as soon as any dynamic event type is
/// built in (uprobes, eprobes). What a kernel accepts is in tracefs's `README` (kernel/trace/
/// trace.c `readme_msg`): `place: [<module>:]<symbol>…` with CONFIG_KPROBE_EVENTS,
/// `f[:[<group>/][<event>]] <func-name>…` with CONFIG_FPROBE_EVENTS, and `<argname>[->field…`
/// with CONFIG_PROBE_EVENTS_BTF_ARGS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSupport {
    /// `<tracefs>/dynamic_events` exists.
    pub dynamic_events: bool,
    /// `<tracefs>/kprobe_events` exists.
    pub kprobe_events: bool,
    /// The README documents kprobe places.
    pub kprobes: bool,
    /// The README documents fprobe events.
    pub fprobes: bool,
    /// The README documents BTF argument names, and kvm_intel has BTF
    /// (`/sys/kernel/btf/kvm_intel`).
    pub btf_args: bool,
    /// The kvm_intel module is loaded (the probed functions live there).
    pub kvm_intel: bool,
    /// L0 uses EPT (`/sys/module/kvm_intel/parameters/ept`).
    pub l0_ept: bool,
    /// Where it looked.
    pub tracefs: PathBuf,
}

impl ProbeSupport {
    /// Looks at a tracefs root and a sysfs root (`/sys`).
    pub fn detect(tracefs: &Path, sysfs: &Path) -> Self {
        let readme = std::fs::read_to_string(tracefs.join("README")).unwrap_or_default();
        let ept = std::fs::read_to_string(sysfs.join("module/kvm_intel/parameters/ept"))
            .is_ok_and(|s| matches!(s.trim(), "Y" | "y" | "1"));
        Self {
            dynamic_events: tracefs.join("dynamic_events").exists(),
            kprobe_events: tracefs.join("kprobe_events").exists(),
            kprobes: readme.contains("place: [<module>:]<symbol>"),
            fprobes: readme.contains("f[:[<group>/][<event>]]"),
            btf_args: readme.contains("<argname>") && sysfs.join("kernel/btf/kvm_intel").exists(),
            kvm_intel: sysfs.join("module/kvm_intel").exists(),
            l0_ept: ept,
            tracefs: tracefs.to_path_buf(),
        }
    }

    /// What is missing for the `vmcs` profile (empty when it can run), one item per line of a
    /// message.
    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        let file = |n: &str| self.tracefs.join(n).display().to_string();
        if !(self.kprobes || self.fprobes) || !(self.dynamic_events || self.kprobe_events) {
            let files = match (self.dynamic_events, self.kprobe_events) {
                (false, false) => format!(
                    "neither {} nor {} exists",
                    file("dynamic_events"),
                    file("kprobe_events")
                ),
                (true, false) => format!(
                    "{} exists but {} does not, and {} lists no kprobe place or fprobe format (only other dynamic event types)",
                    file("dynamic_events"),
                    file("kprobe_events"),
                    file("README")
                ),
                (_, true) => format!("{} lists no kprobe place or fprobe format", file("README")),
            };
            missing.push(format!(
                "probe events on kernel functions (CONFIG_KPROBE_EVENTS or CONFIG_FPROBE_EVENTS): {files}"
            ));
        }
        if !self.kvm_intel {
            missing.push(
                "the kvm_intel module (/sys/module/kvm_intel): the probed functions nested_vmx_load_cr3, vmx_load_mmu_pgd and nested_vmx_vmexit live there".into(),
            );
        }
        missing
    }

    /// The syntax and file to use, when supported.
    pub fn plan(&self) -> Option<(ProbeSyntax, &'static str)> {
        if !self.missing().is_empty() {
            return None;
        }
        let file = if self.dynamic_events { "dynamic_events" } else { "kprobe_events" };
        if self.fprobes && self.btf_args && self.dynamic_events {
            Some((ProbeSyntax::FprobeBtf, "dynamic_events"))
        } else if self.kprobes {
            Some((ProbeSyntax::Kprobe, file))
        } else {
            None
        }
    }
}

/// The `vmcs` profile cannot install its probes.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The kernel lacks what the profile needs.
    #[error("The vmcs profile needs dynamic probes, and this kernel lacks:\n  - {}", .missing.join("\n  - "))]
    Unsupported {
        /// One line per missing piece.
        missing: Vec<String>,
    },
    /// The kernel refused a definition (the probes made before it were removed).
    #[error(
        "The kernel refused the probe `{line}` in {file} (the {made} probe(s) defined before it were removed)"
    )]
    Define {
        /// The definition.
        line: String,
        /// The file written.
        file: String,
        /// How many were made and removed again.
        made: usize,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Appends lines to a dynamic-events file. The real one opens the tracefs file for appending:
/// opening `dynamic_events` with truncation would delete **every** dynamic event of the system.
pub trait ProbeFs {
    /// Appends one line to `file` (relative to the tracefs root).
    fn append(&self, file: &str, line: &str) -> io::Result<()>;
}

/// [`ProbeFs`] on a directory (the tracefs mount, or a temporary directory in tests).
#[derive(Clone, Debug)]
pub struct DirProbeFs {
    /// The root.
    pub root: PathBuf,
}

impl ProbeFs for DirProbeFs {
    fn append(&self, file: &str, line: &str) -> io::Result<()> {
        let mut f = OpenOptions::new().append(true).open(self.root.join(file))?;
        f.write_all(format!("{line}\n").as_bytes())
    }
}

/// Probes this process defined; removed (reverse order) when dropped or [`Self::remove`]d.
/// Drop it only after the instance that enabled them is gone (an enabled event is busy).
pub struct InstalledProbes {
    fs: Box<dyn ProbeFs + Send>,
    file: &'static str,
    /// The group (the events' system in the trace).
    pub group: String,
    made: Vec<ProbeLine>,
}

impl std::fmt::Debug for InstalledProbes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstalledProbes")
            .field("group", &self.group)
            .field("made", &self.made)
            .finish()
    }
}

impl InstalledProbes {
    /// Defines every probe, or none: a failure halfway removes the ones already defined.
    pub fn install(
        fs: Box<dyn ProbeFs + Send>,
        support: &ProbeSupport,
        group: &str,
    ) -> Result<Self, ProbeError> {
        let Some((syntax, file)) = support.plan() else {
            return Err(ProbeError::Unsupported { missing: support.missing() });
        };
        let mut installed = Self { fs, file, group: group.to_owned(), made: Vec::new() };
        for probe in definitions(syntax, group, support.l0_ept) {
            if let Err(source) = installed.fs.append(file, &probe.define) {
                let made = installed.made.len();
                installed.remove_all();
                return Err(ProbeError::Define {
                    line: probe.define,
                    file: file.into(),
                    made,
                    source,
                });
            }
            installed.made.push(probe);
        }
        Ok(installed)
    }

    /// The file the probes were written to.
    pub fn file_path(&self) -> PathBuf {
        PathBuf::from(self.file)
    }

    /// The probes defined.
    pub fn probes(&self) -> &[ProbeLine] {
        &self.made
    }

    /// Removes every probe now; returns the removals that failed.
    pub fn remove(mut self) -> Vec<(String, io::Error)> {
        self.remove_all()
    }

    fn remove_all(&mut self) -> Vec<(String, io::Error)> {
        let mut failed = Vec::new();
        while let Some(p) = self.made.pop() {
            if let Err(e) = self.fs.append(self.file, &p.remove) {
                failed.push((p.remove, e));
            }
        }
        failed
    }
}

impl Drop for InstalledProbes {
    fn drop(&mut self) {
        for (line, e) in self.remove_all() {
            eprintln!("vmxray: cannot remove probe `{line}`: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// One definition per documented grammar, checked token by token.
    fn check_grammar(line: &str, syntax: ProbeSyntax) {
        let mut tokens = line.split(' ');
        let head = tokens.next().unwrap();
        let (kind, name) = head.split_once(':').unwrap();
        assert_eq!(kind, if syntax == ProbeSyntax::FprobeBtf { "f" } else { "p" }, "{line}");
        let (group, event) = name.split_once('/').unwrap();
        let ident = |s: &str| {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !s.as_bytes()[0].is_ascii_digit()
        };
        assert!(ident(group) && ident(event), "{line}");
        let sym = tokens.next().unwrap();
        assert!(ident(sym), "{line}");
        for arg in tokens {
            let (name, fetch) = arg.split_once('=').unwrap();
            assert!(ident(name), "{line}");
            let (what, ty) = fetch.rsplit_once(':').unwrap();
            assert!(["u8", "u16", "u32", "u64", "s32", "x32", "x64"].contains(&ty), "{line}");
            match syntax {
                ProbeSyntax::Kprobe => {
                    let n: u32 = what.strip_prefix("$arg").unwrap().parse().unwrap();
                    assert!((1..=6).contains(&n), "{line}");
                }
                ProbeSyntax::FprobeBtf => {
                    assert!(what.split("->").flat_map(|p| p.split('.')).all(ident), "{line}")
                }
            }
        }
    }

    #[test]
    fn definitions_follow_the_documented_syntax() {
        for syntax in [ProbeSyntax::FprobeBtf, ProbeSyntax::Kprobe] {
            for ept in [true, false] {
                let defs = definitions(syntax, "vmxray_42", ept);
                assert_eq!(defs.len(), 3);
                for d in &defs {
                    check_grammar(&d.define, syntax);
                    assert_eq!(d.remove, format!("-:vmxray_42/{}", d.event));
                }
            }
        }
        let defs = definitions(ProbeSyntax::FprobeBtf, "vmxray_42", true);
        assert_eq!(
            defs[0].define,
            "f:vmxray_42/vmcs_load_cr3 nested_vmx_load_cr3 cr3=cr3:x64 nested_ept=nested_ept:u8 hflags=vcpu->arch.hflags:x32"
        );
        assert_eq!(
            definitions(ProbeSyntax::Kprobe, "vmxray_42", false)[1].define,
            "p:vmxray_42/vmcs_load_mmu_pgd_shadow vmx_load_mmu_pgd root_hpa=$arg2:x64 root_level=$arg3:s32"
        );
    }

    fn support(dynamic: bool, kprobe: bool, kvm_intel: bool) -> ProbeSupport {
        ProbeSupport {
            dynamic_events: dynamic,
            kprobe_events: kprobe,
            kprobes: dynamic || kprobe,
            fprobes: dynamic,
            btf_args: true,
            kvm_intel,
            l0_ept: true,
            tracefs: "/sys/kernel/tracing".into(),
        }
    }

    #[test]
    fn unsupported_kernels_get_a_list_of_what_is_missing() {
        let fs = Box::new(FakeFs::default());
        let err = InstalledProbes::install(fs.clone(), &support(false, false, false), "vmxray_1")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("dynamic_events") && msg.contains("kprobe_events"), "{msg}");
        assert!(msg.contains("kvm_intel"), "{msg}");
        assert!(fs.lines.lock().unwrap().is_empty(), "nothing written");
        // This machine's situation: dynamic_events for uprobes/eprobes only.
        let uprobes_only =
            ProbeSupport { kprobes: false, fprobes: false, ..support(true, false, true) };
        let msg = InstalledProbes::install(fs.clone(), &uprobes_only, "vmxray_1")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("lists no kprobe place or fprobe format"), "{msg}");
        assert_eq!(support(false, true, true).plan(), Some((ProbeSyntax::Kprobe, "kprobe_events")));
        assert_eq!(
            support(true, false, true).plan(),
            Some((ProbeSyntax::FprobeBtf, "dynamic_events"))
        );
    }

    /// A dynamic_events file that refuses the `fail_at`-th definition.
    #[derive(Clone, Default)]
    struct FakeFs {
        lines: Arc<Mutex<Vec<String>>>,
        fail_at: Option<usize>,
    }

    impl ProbeFs for FakeFs {
        fn append(&self, file: &str, line: &str) -> io::Result<()> {
            let mut lines = self.lines.lock().unwrap();
            let defs = lines.iter().filter(|l| !l.contains(" -:")).count();
            if !line.starts_with('-') && Some(defs) == self.fail_at {
                return Err(io::Error::from_raw_os_error(22));
            }
            lines.push(format!("{file}: {line}"));
            Ok(())
        }
    }

    /// On the machine running the tests: when the kernel cannot probe functions (the development
    /// machines: uprobes only, no kvm_intel), the reason is spelled out.
    #[cfg(target_os = "linux")]
    #[test]
    fn this_machine_is_detected_or_explained() {
        let Some(root) = crate::Tracefs::find() else {
            vmxray_events::test_util::skip("tracefs is not mounted");
            return;
        };
        let support = ProbeSupport::detect(&root, Path::new("/sys"));
        match support.plan() {
            Some((syntax, file)) => assert!(support.tracefs.join(file).exists(), "{syntax:?}"),
            None => {
                let missing = support.missing();
                assert!(!missing.is_empty());
                let text = missing.join("\n");
                assert!(text.contains("kprobe") || text.contains("kvm_intel"), "{text}");
            }
        }
    }

    #[test]
    fn probes_of_dead_recorders_are_found() {
        let listing = "f:vmxray_10/vmcs_load_cr3 nested_vmx_load_cr3 cr3=cr3:x64\np:vmxray_20/vmcs_nested_vmexit nested_vmx_vmexit reason=$arg2:x32\nf:user/mine vfs_read\np:vmxray_x/odd foo\n";
        assert_eq!(stale_removals(listing, |pid| pid == 20), ["-:vmxray_10/vmcs_load_cr3"]);
        assert!(stale_removals(listing, |_| true).is_empty());
    }

    #[test]
    fn a_failure_halfway_removes_what_was_made() {
        let fs = FakeFs { fail_at: Some(2), ..FakeFs::default() };
        let err =
            InstalledProbes::install(Box::new(fs.clone()), &support(true, true, true), "vmxray_7")
                .unwrap_err();
        assert!(matches!(err, ProbeError::Define { made: 2, .. }), "{err}");
        let lines = fs.lines.lock().unwrap().clone();
        assert_eq!(
            lines,
            [
                "dynamic_events: f:vmxray_7/vmcs_load_cr3 nested_vmx_load_cr3 cr3=cr3:x64 nested_ept=nested_ept:u8 hflags=vcpu->arch.hflags:x32",
                "dynamic_events: f:vmxray_7/vmcs_load_mmu_pgd_ept vmx_load_mmu_pgd root_hpa=root_hpa:x64 root_level=root_level:s32 hflags=vcpu->arch.hflags:x32",
                "dynamic_events: -:vmxray_7/vmcs_load_mmu_pgd_ept",
                "dynamic_events: -:vmxray_7/vmcs_load_cr3",
            ]
        );
    }

    #[test]
    fn drop_removes_in_reverse_order_on_a_directory_root() {
        let dir = std::env::temp_dir().join(format!("vmxray-probes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dynamic_events"), "f:user/theirs vfs_read\n").unwrap();
        let support = ProbeSupport { kprobe_events: false, ..support(true, false, true) };
        {
            let probes = InstalledProbes::install(
                Box::new(DirProbeFs { root: dir.clone() }),
                &support,
                "vmxray_9",
            )
            .unwrap();
            assert_eq!(probes.probes().len(), 3);
        }
        let text = std::fs::read_to_string(dir.join("dynamic_events")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Appended, never truncated: the user's own probe is still first.
        assert_eq!(lines[0], "f:user/theirs vfs_read");
        assert_eq!(
            &lines[4..],
            [
                "-:vmxray_9/vmcs_nested_vmexit",
                "-:vmxray_9/vmcs_load_mmu_pgd_ept",
                "-:vmxray_9/vmcs_load_cr3"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
