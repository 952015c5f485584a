//! The real-VMX lab: `vmxray` inside a Debian kernel that Bochs runs on an emulated Intel CPU
//! with VMX, so that its `/dev/kvm` is a real `kvm_intel` (EPT, VPID, shadow VMCS, nested).
//!
//! A [`Plan`] is a list of [`Step`]s — argument vectors run inside the emulated host, each under
//! its own `kvm_intel` parameters — plus extra files to put in its root. [`run`] builds the boot
//! image (`samples/vmx/build-image.sh`: pinned Debian packages, cached under `target/vmxlab/`),
//! adds this `vmxray` binary with its libraries, boots Bochs headless, watches the serial
//! console, and unpacks what each step left in its directory from the results disk:
//!
//! ```text
//!  host                                   Bochs (corei7_haswell_4770, VMX)
//!  ────                                   ───────────────────────────────
//!  build-image.sh iso ─► boot.iso ──────► isolinux ─► Debian kernel + initramfs
//!                                           /init: insmod ata, kvm, kvm_intel PARAMS
//!                                           /vmxlab/plan.sh: step NAME TIMEOUT ARGV...
//!                                              └─ cwd /out/NAME, e.g. vmxray lab io-loop -o trace.dat
//!  results.img (raw, zeroed) ◄─ frames ──── emit: content, fsync, then its header
//!  serial.log ◄──────────────── console ─── "VMXLAB: step NAME rc=0"
//!  └─► work/out/NAME/{trace.dat, stdout, stderr, status, params.txt, dmesg}
//! ```
//!
//! A frame is a 512-byte header block, `VMXLAB-FILE <size> <name>\n` or `VMXLAB-END\n`,
//! followed by the content padded to 512 bytes. The guest flushes the content before the
//! header, so whatever happens to the guest, every header found describes complete content;
//! reading stops at the first block that is not a header. `VMXLAB-END` means the plan ran to
//! its end.
//!
//! `{out}` in a step's arguments is replaced by the step's directory in the guest
//! (`/out/NAME`), which is also its working directory.

use std::fmt;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A kernel generation the lab boots (the exact packages are pinned in
/// `samples/vmx/packages.lock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kernel {
    /// Debian 12's 6.1 (bookworm-security).
    V6_1,
    /// 6.12 from bookworm-backports.
    V6_12,
}

impl Kernel {
    /// Every generation, oldest first.
    pub const ALL: [Self; 2] = [Self::V6_1, Self::V6_12];

    /// The name `build-image.sh` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kernel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "6.1" => Ok(Self::V6_1),
            "6.12" => Ok(Self::V6_12),
            _ => Err(format!("unknown kernel {s:?}: expected 6.1 or 6.12")),
        }
    }
}

/// One command run inside the emulated host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The step's name: its directory in the guest (`/out/NAME`) and on the host
    /// (`WORK/out/NAME`). Letters, digits, `.`, `_` and `-`.
    pub name: String,
    /// The `kvm_intel` parameters to run under (`nested=1`, `ept=0`, ...); the module is
    /// reloaded when they differ from the previous step's.
    pub kvm_intel: Vec<String>,
    /// The program and its arguments (`vmxray` is on the guest's PATH; prefix `env K=V` for
    /// environment variables). `{out}` is replaced by the step's directory.
    pub argv: Vec<String>,
    /// Guest seconds after which the step is killed.
    pub timeout: Duration,
}

/// A host file copied into the emulated host's root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraFile {
    /// The file on the host.
    pub host: PathBuf,
    /// Where it goes in the guest (absolute, e.g. `/lib/vmxray/l1.bin`).
    pub guest: PathBuf,
}

/// What to boot and run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The kernel generation of the emulated host.
    pub kernel: Kernel,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Files to add to the guest's root.
    pub extra_files: Vec<ExtraFile>,
    /// Add QEMU and an L1 Linux (`/l1/run-l1.sh`, see `samples/vmx/linux-l1/`).
    pub l1_linux: bool,
    /// The `vmxray` binary to run inside (dynamically linked is fine: its libraries go along).
    pub vmxray: PathBuf,
    /// Where the ISO, the disks, the logs and the results go.
    pub work_dir: PathBuf,
    /// Wall-clock limit for the whole boot.
    pub timeout: Duration,
    /// Bochs CPU model (must have VMX).
    pub cpu_model: String,
    /// Guest memory in MiB.
    pub megs: u32,
    /// Emulated instructions per second (Bochs `ips`); guest time runs at about
    /// (host speed / ips) of wall time.
    pub ips: u64,
}

impl Plan {
    /// A plan with no steps and the defaults: Haswell model (VMX, EPT, VPID, shadow VMCS,
    /// preemption timer), 1 GiB, 50M ips, 15 minutes.
    pub fn new(kernel: Kernel, vmxray: PathBuf, work_dir: PathBuf) -> Self {
        Self {
            kernel,
            steps: Vec::new(),
            extra_files: Vec::new(),
            l1_linux: false,
            vmxray,
            work_dir,
            timeout: Duration::from_secs(900),
            cpu_model: DEFAULT_CPU_MODEL.to_owned(),
            megs: 1024,
            ips: 50_000_000,
        }
    }
}

/// The Bochs CPU model the lab uses unless told otherwise.
pub const DEFAULT_CPU_MODEL: &str = "corei7_haswell_4770";

/// What one step did.
#[derive(Clone, Debug)]
pub struct StepResult {
    /// The step's name.
    pub name: String,
    /// Its exit status in the guest (137 when its timeout killed it), `None` when the guest
    /// died before the step ended.
    pub status: Option<i32>,
    /// Its files on the host (`WORK/out/NAME`).
    pub dir: PathBuf,
    /// Its standard error.
    pub stderr: String,
    /// The `kvm_intel`/`kvm` parameters it ran under (`kvm_intel/parameters/ept Y` lines).
    pub params: String,
    /// Guest seconds it took.
    pub guest_seconds: Option<f64>,
}

impl StepResult {
    /// The value of a module parameter it ran under (`module_param("kvm_intel", "ept")`).
    pub fn module_param(&self, module: &str, param: &str) -> Option<&str> {
        let key = format!("{module}/parameters/{param}");
        self.params.lines().find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then_some(v)
        })
    }
}

/// A finished boot.
#[derive(Clone, Debug)]
pub struct Run {
    /// The work directory (ISO, disks, logs, `out/`).
    pub work_dir: PathBuf,
    /// What the emulated host said about itself (`release`, CPU model, VMX flags, ...).
    pub host: String,
    /// The steps, in plan order (a step the guest never reached is missing).
    pub steps: Vec<StepResult>,
    /// The image manifest: pinned package versions, modules, Bochs and QEMU versions.
    pub manifest: String,
    /// Wall-clock time of the boot.
    pub wall: Duration,
}

impl Run {
    /// `uname -r` of the emulated host.
    pub fn kernel_release(&self) -> Option<&str> {
        self.host.lines().find_map(|l| l.strip_prefix("release "))
    }
}

/// Why a lab run failed.
#[derive(Debug, thiserror::Error)]
pub enum VmxLabError {
    /// A host tool is missing.
    #[error("{tool} is not installed (scripts/setup.sh installs it when run as root)")]
    ToolMissing {
        /// The program.
        tool: &'static str,
    },
    /// The image scripts are not where they should be.
    #[error("The lab's image script {0} does not exist (set VMXLAB_DIR to samples/vmx)")]
    ScriptMissing(PathBuf),
    /// The `vmxray` binary to run inside does not exist.
    #[error("The vmxray binary {0} does not exist")]
    NoBinary(PathBuf),
    /// A step name that cannot be a directory name.
    #[error("Step name {0:?}: use letters, digits, '.', '_' and '-'")]
    BadStepName(String),
    /// Two steps with the same name.
    #[error("Two steps are named {0:?}")]
    DuplicateStep(String),
    /// A step without a program.
    #[error("Step {0:?} has no command")]
    EmptyStep(String),
    /// An extra file's guest path is not absolute or leaves the root.
    #[error("Guest path {0} must be absolute and stay under /")]
    BadGuestPath(PathBuf),
    /// `build-image.sh` failed.
    #[error("Building the boot image failed ({status}); its last lines:\n{stderr_tail}")]
    ImageBuild {
        /// How it ended.
        status: String,
        /// The end of its standard error.
        stderr_tail: String,
    },
    /// Bochs stopped using the CPU without ending (blocked).
    #[error(
        "Bochs used no CPU time for {seconds} s without ending (blocked; partial results in \
         {work_dir}); serial console tail:\n{tail}"
    )]
    Stalled {
        /// How long it made no progress.
        seconds: u64,
        /// The work directory.
        work_dir: PathBuf,
        /// The end of the serial console.
        tail: String,
    },
    /// The boot ran out of time.
    #[error(
        "The emulated host did not finish within {seconds} s (partial results in {work_dir}); \
         serial console tail:\n{tail}"
    )]
    Timeout {
        /// The limit.
        seconds: u64,
        /// The work directory.
        work_dir: PathBuf,
        /// The end of the serial console.
        tail: String,
    },
    /// The emulated host's kernel panicked.
    #[error(
        "The emulated host's kernel panicked (partial results in {work_dir}); serial console tail:\n{tail}"
    )]
    KernelPanic {
        /// The work directory.
        work_dir: PathBuf,
        /// The end of the serial console.
        tail: String,
    },
    /// Bochs ended before the plan did.
    #[error(
        "Bochs exited ({status}) before the plan finished (partial results in {work_dir}); \
         serial console tail:\n{tail}"
    )]
    Incomplete {
        /// How Bochs ended.
        status: String,
        /// The work directory.
        work_dir: PathBuf,
        /// The end of the serial console.
        tail: String,
    },
    /// The results disk holds a header that does not parse.
    #[error("Results disk {path}: bad frame header at block {block}")]
    BadFrame {
        /// The disk image.
        path: PathBuf,
        /// The header's block.
        block: u64,
    },
    /// A file operation failed.
    #[error("Cannot {what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmxLabError {
    let path = path.to_path_buf();
    move |source| VmxLabError::Io { what, path, source }
}

/// `samples/vmx/` (or `$VMXLAB_DIR`): the image scripts.
pub fn lab_dir() -> PathBuf {
    std::env::var_os("VMXLAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("vmx"))
}

/// `target/vmxlab/` of this workspace (or `$VMXLAB_CACHE`): the image cache and the runs.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("VMXLAB_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        let samples = Path::new(env!("CARGO_MANIFEST_DIR"));
        samples.parent().unwrap_or(samples).join("target").join("vmxlab")
    })
}

/// A fresh work directory under [`cache_dir`]`/runs/`.
pub fn new_work_dir(label: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    cache_dir().join("runs").join(format!("{label}-{stamp}-{}", std::process::id()))
}

/// The host tools a run needs, first missing one reported.
pub fn check_tools() -> Result<(), VmxLabError> {
    for tool in ["bochs-bin", "script", "xorriso", "cpio", "strip", "dpkg-deb", "apt-get"] {
        if !on_path(tool) {
            return Err(VmxLabError::ToolMissing { tool });
        }
    }
    for file in ["/usr/share/bochs/BIOS-bochs-latest", "/usr/share/bochs/VGABIOS-lgpl-latest"] {
        if !Path::new(file).exists() {
            return Err(VmxLabError::ToolMissing { tool: "bochsbios/vgabios" });
        }
    }
    // Debian's bochs has no `nogui` display; `term` (package bochs-term) runs in a pty.
    if !Path::new("/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_term_gui.so").exists() {
        return Err(VmxLabError::ToolMissing { tool: "bochs-term" });
    }
    Ok(())
}

/// True when `program` is an executable file on `PATH`.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn valid_step_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `'...'` for the guest's shell.
fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// The guest's `/vmxlab/plan.sh` (sourced by `samples/vmx/init`, which defines `kvm` and
/// `step`).
pub fn plan_script(plan: &Plan) -> Result<String, VmxLabError> {
    let mut script = String::from("# Written by vmxray lab --vmx; sourced by /init.\n");
    let mut seen = std::collections::BTreeSet::new();
    for step in &plan.steps {
        if !valid_step_name(&step.name) {
            return Err(VmxLabError::BadStepName(step.name.clone()));
        }
        if !seen.insert(step.name.as_str()) {
            return Err(VmxLabError::DuplicateStep(step.name.clone()));
        }
        if step.argv.is_empty() {
            return Err(VmxLabError::EmptyStep(step.name.clone()));
        }
        script.push_str("kvm");
        for param in &step.kvm_intel {
            script.push(' ');
            script.push_str(&shell_quote(param));
        }
        script.push_str(" || say \"kvm_intel did not load\"\n");
        let out = format!("/out/{}", step.name);
        script.push_str(&format!(
            "step {} {}",
            shell_quote(&step.name),
            step.timeout.as_secs().max(1)
        ));
        for arg in &step.argv {
            script.push(' ');
            script.push_str(&shell_quote(&arg.replace("{out}", &out)));
        }
        script.push('\n');
    }
    Ok(script)
}

/// A guest path made relative to the root, refused when it is not absolute or uses `..`.
fn guest_relative(path: &Path) -> Result<PathBuf, VmxLabError> {
    use std::path::Component;
    if !path.is_absolute() {
        return Err(VmxLabError::BadGuestPath(path.to_path_buf()));
    }
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => rel.push(part),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(VmxLabError::BadGuestPath(path.to_path_buf()));
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(VmxLabError::BadGuestPath(path.to_path_buf()));
    }
    Ok(rel)
}

/// Lays out the payload directory: the binary, the extra files, the plan.
fn write_payload(plan: &Plan, payload: &Path) -> Result<(), VmxLabError> {
    if payload.exists() {
        fs::remove_dir_all(payload).map_err(io_err("remove", payload))?;
    }
    let bin = payload.join("bin");
    let vmxlab = payload.join("vmxlab");
    for dir in [&bin, &vmxlab] {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    if !plan.vmxray.is_file() {
        return Err(VmxLabError::NoBinary(plan.vmxray.clone()));
    }
    let target = bin.join("vmxray");
    fs::copy(&plan.vmxray, &target).map_err(io_err("copy the vmxray binary to", &target))?;
    for extra in &plan.extra_files {
        let target = payload.join(guest_relative(&extra.guest)?);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        fs::copy(&extra.host, &target).map_err(io_err("copy", &extra.host))?;
    }
    let script = plan_script(plan)?;
    let path = vmxlab.join("plan.sh");
    fs::write(&path, script).map_err(io_err("write", &path))
}

/// The last `lines` lines of a text.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `build-image.sh iso`, returning the ISO's path.
fn build_iso(plan: &Plan, payload: &Path, iso: &Path) -> Result<(), VmxLabError> {
    let script = lab_dir().join("build-image.sh");
    if !script.is_file() {
        return Err(VmxLabError::ScriptMissing(script));
    }
    let mut cmd = Command::new(&script);
    cmd.arg("iso").arg(plan.kernel.as_str()).arg(payload).arg(iso);
    if plan.l1_linux {
        cmd.arg("--l1linux");
    }
    cmd.env("VMXLAB_CACHE", cache_dir());
    let output = cmd.stdin(Stdio::null()).output().map_err(io_err("run", &script))?;
    if !output.status.success() {
        return Err(VmxLabError::ImageBuild {
            status: output.status.to_string(),
            stderr_tail: tail(&String::from_utf8_lossy(&output.stderr), 20),
        });
    }
    Ok(())
}

/// Size of the results disk: 1024 cylinders of 16 heads × 63 sectors (504 MiB, sparse).
const DISK_CYLINDERS: u64 = 1024;
const DISK_HEADS: u64 = 16;
const DISK_SPT: u64 = 63;

fn bochsrc(plan: &Plan, iso: &Path, disk: &Path, serial: &Path, log: &Path) -> String {
    format!(
        "# Written by vmxray lab --vmx.\n\
         config_interface: textconfig\n\
         display_library: term\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
         vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest\n\
         vga: extension=vbe\n\
         megs: {megs}\n\
         cpu: model={model}, count=1, ips={ips}, reset_on_triple_fault=0\n\
         ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14\n\
         ata0-master: type=cdrom, path={iso}, status=inserted\n\
         ata1: enabled=1, ioaddr1=0x170, ioaddr2=0x370, irq=15\n\
         ata1-master: type=disk, path={disk}, mode=flat, cylinders={DISK_CYLINDERS}, heads={DISK_HEADS}, spt={DISK_SPT}\n\
         boot: cdrom\n\
         clock: sync=none, time0=local\n\
         com1: enabled=1, mode=file, dev={serial}\n\
         log: {log}\n\
         panic: action=fatal\n\
         error: action=ignore\n\
         info: action=ignore\n\
         debug: action=ignore\n\
         mouse: enabled=0\n\
         speaker: enabled=0\n\
         sound: driver=dummy\n",
        megs = plan.megs,
        model = plan.cpu_model,
        ips = plan.ips,
        iso = iso.display(),
        disk = disk.display(),
        serial = serial.display(),
        log = log.display(),
    )
}

/// Bochs, running in a pty that `script(1)` provides (its `term` display needs a terminal).
///
/// With the debugger compiled in (Debian's build), the `term` display does not draw on that
/// terminal: it opens a pty of its own, says `Bochs connected to screen "/dev/pts/N"`, and
/// draws into its master. Nobody reads that screen, so after a few KiB of screen updates
/// Bochs blocks in `write` for good; [`Bochs::drain_screen`] opens the screen's slave and
/// reads it away.
struct Bochs {
    script: Child,
    pid_file: PathBuf,
    term_log: PathBuf,
    screen: Option<std::thread::JoinHandle<()>>,
}

impl Bochs {
    fn start(work: &Path, rc: &Path, cpu_seconds: u64) -> Result<Self, VmxLabError> {
        let dbg = work.join("dbg.rc");
        // Debian's bochs has the debugger built in: continue, and quit when the guest stops.
        fs::write(&dbg, "c\nquit\n").map_err(io_err("write", &dbg))?;
        let pid_file = work.join("bochs.pid");
        let _ = fs::remove_file(&pid_file);
        // bochs-bin ignores SIGTERM; the CPU-time limit is the backstop when nobody is left
        // to SIGKILL it (Bochs runs a core flat out, so CPU time tracks wall time).
        let inner = format!(
            "echo $$ > {pid}; ulimit -t {cpu_seconds}; exec nice -n 10 bochs-bin -q -f {rc} -rc {dbg}",
            pid = shell_quote(&pid_file.to_string_lossy()),
            rc = shell_quote(&rc.to_string_lossy()),
            dbg = shell_quote(&dbg.to_string_lossy()),
        );
        let term_log = work.join("term.out");
        let term = fs::File::create(&term_log).map_err(io_err("create", &term_log))?;
        let term_err = term.try_clone().map_err(io_err("open", &term_log))?;
        let script = Command::new("script")
            .args(["-qfec", &inner, "/dev/null"])
            .env("TERM", "xterm")
            .env("SHELL", "/bin/sh")
            .stdin(Stdio::null())
            .stdout(term)
            .stderr(term_err)
            .spawn()
            .map_err(io_err("run", Path::new("script")))?;
        Ok(Self { script, pid_file, term_log, screen: None })
    }

    /// Once Bochs has named its screen pty, puts it in raw mode (no echo back into Bochs'
    /// keyboard) and reads everything drawn on it, in a thread that ends with Bochs.
    fn drain_screen(&mut self) {
        if self.screen.is_some() {
            return;
        }
        let Ok(text) = fs::read_to_string(&self.term_log) else { return };
        let Some(path) = text
            .split_once("connected to screen \"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(path, _)| PathBuf::from(path))
            .filter(|path| path.starts_with("/dev/pts/"))
        else {
            return;
        };
        let _ = Command::new("stty")
            .arg("-F")
            .arg(&path)
            .args(["raw", "-echo"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        use std::os::unix::fs::OpenOptionsExt;
        let opened = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOCTTY).open(&path);
        let Ok(mut screen) = opened else { return };
        self.screen = Some(std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            // Ends with an error (EIO) once Bochs closes the master.
            while screen.read(&mut buf).is_ok_and(|n| n > 0) {}
        }));
    }

    /// CPU time Bochs has used so far, in clock ticks (`None` once it is gone).
    fn cpu_ticks(&self) -> Option<u64> {
        let pid = fs::read_to_string(&self.pid_file).ok()?;
        let stat = fs::read_to_string(format!("/proc/{}/stat", pid.trim())).ok()?;
        // Fields after "(comm)": state is the 1st, utime the 12th, stime the 13th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }

    /// `Some(status)` once Bochs (and `script`) ended.
    fn try_wait(&mut self) -> Option<String> {
        match self.script.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// SIGKILLs Bochs (the process this run started, by its pid) and reaps `script`.
    fn kill(&mut self) {
        if let Some(pid) = fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "bochs-bin")
            })
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.try_wait().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.script.kill();
        let _ = self.script.wait();
    }
}

impl Drop for Bochs {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.kill();
        }
    }
}

/// Reads new bytes of the serial console as they arrive.
struct Console {
    path: PathBuf,
    offset: u64,
    partial: String,
    text: String,
}

impl Console {
    fn new(path: PathBuf) -> Self {
        Self { path, offset: 0, partial: String::new(), text: String::new() }
    }

    /// Complete new lines since the last call.
    fn poll(&mut self) -> Vec<String> {
        let Ok(mut file) = fs::File::open(&self.path) else { return Vec::new() };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        let chunk = String::from_utf8_lossy(&bytes).replace('\r', "");
        self.text.push_str(&chunk);
        self.partial.push_str(&chunk);
        let mut lines = Vec::new();
        while let Some(end) = self.partial.find('\n') {
            lines.push(self.partial[..end].to_owned());
            self.partial.drain(..=end);
        }
        lines
    }

    fn tail(&self, lines: usize) -> String {
        tail(&self.text, lines)
    }
}

/// A file found on the results disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultFile {
    /// Its name, relative to the run's output directory (`STEP/trace.dat`).
    pub name: String,
    /// Where it was written.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
}

/// What the results disk held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Results {
    /// The files, in the order the guest sent them.
    pub files: Vec<ResultFile>,
    /// True when the plan ran to its end (`VMXLAB-END`).
    pub complete: bool,
}

/// The results disk's block: frames start on block boundaries.
const BLOCK: u64 = 512;
const BLOCK_LEN: usize = 512;

/// A result name made safe as a relative path (`STEP/file`): no `..`, no absolute path.
fn safe_result_name(name: &str) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for part in name.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.contains('\0') {
            return None;
        }
        rel.push(part);
    }
    Some(rel)
}

/// Unpacks the frames of a results disk into `out`.
pub fn read_results(disk: &Path, out: &Path) -> Result<Results, VmxLabError> {
    let mut file = fs::File::open(disk).map_err(io_err("open", disk))?;
    let disk_len = file.metadata().map_err(io_err("stat", disk))?.len();
    let mut results = Results::default();
    let mut block = 0u64;
    let mut header = [0u8; BLOCK_LEN];
    while (block + 1) * BLOCK <= disk_len {
        file.seek(SeekFrom::Start(block * BLOCK)).map_err(io_err("seek in", disk))?;
        file.read_exact(&mut header).map_err(io_err("read", disk))?;
        let line_end = header.iter().position(|&b| b == b'\n').unwrap_or(0);
        let line = std::str::from_utf8(&header[..line_end]).unwrap_or("");
        if line == "VMXLAB-END" {
            results.complete = true;
            break;
        }
        let Some(rest) = line.strip_prefix("VMXLAB-FILE ") else { break };
        let bad = || VmxLabError::BadFrame { path: disk.to_path_buf(), block };
        let (size, name) = rest.split_once(' ').ok_or_else(bad)?;
        let size: u64 = size.parse().map_err(|_| bad())?;
        let rel = safe_result_name(name).ok_or_else(bad)?;
        if (block + 1) * BLOCK + size > disk_len {
            return Err(bad());
        }
        let path = out.join(&rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        let mut content = Vec::new();
        (&mut file).take(size).read_to_end(&mut content).map_err(io_err("read", disk))?;
        fs::write(&path, &content).map_err(io_err("write", &path))?;
        results.files.push(ResultFile { name: name.to_owned(), path, size });
        block += 1 + size.div_ceil(BLOCK);
    }
    Ok(results)
}

/// Bochs interprets without pause (a halted guest is fast-forwarded): a Bochs that used no
/// CPU for this long is blocked, even on a loaded machine.
const STALL_LIMIT: Duration = Duration::from_secs(180);

/// Progress of a run, as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Building the image.
    Building,
    /// Bochs started.
    Booting,
    /// A line of the guest's progress (`VMXLAB: ...` from the emulated host, `L1: ...` from
    /// an L1 Linux).
    Guest(String),
}

/// Builds the image, boots it, runs the plan, and returns what every step left.
///
/// The work directory keeps `boot.iso`, `results.img`, `serial.log`, `bochs.log`,
/// `bochsrc` and the unpacked `out/` (the caller removes it when it wants to).
pub fn run(plan: &Plan, progress: &mut dyn FnMut(Progress)) -> Result<Run, VmxLabError> {
    check_tools()?;
    let work = &plan.work_dir;
    fs::create_dir_all(work).map_err(io_err("create", work))?;
    let payload = work.join("payload");
    let iso = work.join("boot.iso");
    let disk = work.join("results.img");
    let serial = work.join("serial.log");
    let out = work.join("out");
    progress(Progress::Building);
    write_payload(plan, &payload)?;
    build_iso(plan, &payload, &iso)?;
    // The payload is in the ISO now; it is the size of the binary.
    let _ = fs::remove_dir_all(&payload);
    let manifest_path = cache_dir().join(plan.kernel.as_str()).join("manifest.txt");
    let manifest = fs::read_to_string(&manifest_path).unwrap_or_default();

    for stale in [&disk, &serial] {
        let _ = fs::remove_file(stale);
    }
    if out.exists() {
        fs::remove_dir_all(&out).map_err(io_err("remove", &out))?;
    }
    let disk_file = fs::File::create(&disk).map_err(io_err("create", &disk))?;
    disk_file
        .set_len(DISK_CYLINDERS * DISK_HEADS * DISK_SPT * BLOCK)
        .map_err(io_err("size", &disk))?;
    drop(disk_file);
    let rc = work.join("bochsrc");
    fs::write(&rc, bochsrc(plan, &iso, &disk, &serial, &work.join("bochs.log")))
        .map_err(io_err("write", &rc))?;

    progress(Progress::Booting);
    let started = Instant::now();
    let mut bochs = Bochs::start(work, &rc, plan.timeout.as_secs() + 60)?;
    let mut console = Console::new(serial.clone());
    let mut panicked_at: Option<Instant> = None;
    let mut progress_at = (Instant::now(), None::<u64>);
    let ended = loop {
        bochs.drain_screen();
        let ticks = bochs.cpu_ticks();
        if ticks != progress_at.1 {
            progress_at = (Instant::now(), ticks);
        } else if progress_at.0.elapsed() > STALL_LIMIT {
            bochs.kill();
            break Err("stalled");
        }
        for line in console.poll() {
            let line = line.trim_start();
            if line.starts_with("VMXLAB:") || line.starts_with("L1:") {
                progress(Progress::Guest(line.to_owned()));
            }
            if line.contains("Kernel panic - not syncing") && panicked_at.is_none() {
                panicked_at = Some(Instant::now());
            }
        }
        if let Some(status) = bochs.try_wait() {
            break Ok(status);
        }
        // Give a panic message a moment to reach the log, then stop.
        if panicked_at.is_some_and(|t| t.elapsed() > Duration::from_secs(3)) {
            bochs.kill();
            break Err("panic");
        }
        if started.elapsed() > plan.timeout {
            bochs.kill();
            break Err("timeout");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let wall = started.elapsed();
    console.poll();
    // Whatever happened, unpack what the guest sent; a failed boot's own error comes first.
    let results = read_results(&disk, &out);
    let tail = console.tail(40);
    match ended {
        Err("panic") => {
            return Err(VmxLabError::KernelPanic { work_dir: work.clone(), tail });
        }
        Err("stalled") => {
            return Err(VmxLabError::Stalled {
                seconds: STALL_LIMIT.as_secs(),
                work_dir: work.clone(),
                tail,
            });
        }
        Err(_) => {
            return Err(VmxLabError::Timeout {
                seconds: plan.timeout.as_secs(),
                work_dir: work.clone(),
                tail,
            });
        }
        Ok(status) if !results?.complete => {
            return Err(VmxLabError::Incomplete { status, work_dir: work.clone(), tail });
        }
        Ok(_) => {}
    }
    let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
    let steps = plan
        .steps
        .iter()
        .filter(|step| out.join(&step.name).is_dir())
        .map(|step| {
            let dir = out.join(&step.name);
            let status_text = read(dir.join("status"));
            let field = |key: &str| {
                status_text.lines().find_map(|l| l.strip_prefix(key)?.trim().parse::<f64>().ok())
            };
            StepResult {
                name: step.name.clone(),
                status: status_text
                    .lines()
                    .find_map(|l| l.strip_prefix("rc ")?.trim().parse::<i32>().ok()),
                stderr: read(dir.join("stderr")),
                params: read(dir.join("params.txt")),
                guest_seconds: field("end ").zip(field("start ")).map(|(end, start)| end - start),
                dir,
            }
        })
        .collect();
    Ok(Run { work_dir: work.clone(), host: read(out.join("host.txt")), steps, manifest, wall })
}

/// What a recorded trace holds, read back with vmxray's reader.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceSummary {
    /// Events read.
    pub events: u64,
    /// Events the trace says were lost.
    pub lost: u64,
    /// The traced kernel (`uname -r`), when the trace says it.
    pub kernel: Option<String>,
    /// Events per tracepoint name.
    pub by_name: std::collections::BTreeMap<String, u64>,
    /// `kvm_exit` reasons (`IO_INSTRUCTION`, ...).
    pub exit_reasons: std::collections::BTreeMap<String, u64>,
    /// `kvm_nested_vmexit` reasons.
    pub nested_exit_reasons: std::collections::BTreeMap<String, u64>,
}

/// Reads a trace to its end with vmxray's reader (strict: a bad record is an error).
pub fn summarize(path: &Path) -> Result<TraceSummary, vmxray_capture::ReadError> {
    use vmxray_events::EventKind;
    let mut reader = vmxray_capture::open(path, vmxray_capture::ReadOptions::default())?;
    let mut summary =
        TraceSummary { kernel: reader.meta().kernel.clone(), ..TraceSummary::default() };
    for event in reader.by_ref() {
        let event = event?;
        summary.events += 1;
        *summary.by_name.entry(event.name().to_owned()).or_default() += 1;
        match &event.kind {
            EventKind::KvmExit(exit) => {
                *summary.exit_reasons.entry(exit.reason().to_string()).or_default() += 1;
            }
            EventKind::KvmNestedVmexit(exit) => {
                *summary.nested_exit_reasons.entry(exit.reason().to_string()).or_default() += 1;
            }
            _ => {}
        }
    }
    summary.lost = reader.stats().lost_total().0;
    Ok(summary)
}

/// What `trace-cmd report` made of a trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceCmdReport {
    /// Event lines printed.
    pub lines: u64,
    /// Lines whose event trace-cmd printed as `[FAILED TO PARSE]` (its plugins' limits, e.g.
    /// `kvm_inj_exception` on some kernels; the event is still there).
    pub failed_to_parse: u64,
}

/// Reads a trace with `trace-cmd report`: `None` when trace-cmd is not installed, else what it
/// printed, or its error output when it failed.
pub fn trace_cmd_report(path: &Path) -> Option<Result<TraceCmdReport, String>> {
    if !on_path("trace-cmd") {
        return None;
    }
    let output = match Command::new("trace-cmd").arg("report").arg(path).output() {
        Ok(output) => output,
        Err(e) => return Some(Err(e.to_string())),
    };
    if !output.status.success() {
        return Some(Err(tail(&String::from_utf8_lossy(&output.stderr), 5)));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut report = TraceCmdReport::default();
    // Event lines carry "[CPU]"; the header lines (cpus=N, version) do not.
    for line in stdout.lines().filter(|l| l.contains(']')) {
        report.lines += 1;
        if line.contains("FAILED TO PARSE") {
            report.failed_to_parse += 1;
        }
    }
    Some(Ok(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan::new(Kernel::V6_1, PathBuf::from("/bin/true"), PathBuf::from("/tmp/x"))
    }

    fn step(name: &str, argv: &[&str]) -> Step {
        Step {
            name: name.to_owned(),
            kvm_intel: vec!["nested=1".into(), "ept=0".into()],
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn plan_script_quotes_and_substitutes() {
        let mut p = plan();
        p.steps.push(step("a-1", &["vmxray", "lab", "io-loop=5", "-o", "{out}/trace.dat"]));
        p.steps.push(step("b", &["sh", "-c", "echo 'it''s'"]));
        let script = plan_script(&p).unwrap();
        assert!(script.contains(
            "kvm 'nested=1' 'ept=0' || say \"kvm_intel did not load\"\n\
             step 'a-1' 60 'vmxray' 'lab' 'io-loop=5' '-o' '/out/a-1/trace.dat'\n"
        ));
        assert!(script.contains(r"'echo '\''it'\'''\''s'\'''"));
    }

    #[test]
    fn plan_script_refuses_bad_steps() {
        let mut p = plan();
        p.steps.push(step("../x", &["true"]));
        assert!(matches!(plan_script(&p), Err(VmxLabError::BadStepName(_))));
        p.steps = vec![step("x", &["true"]), step("x", &["true"])];
        assert!(matches!(plan_script(&p), Err(VmxLabError::DuplicateStep(_))));
        p.steps = vec![step("x", &[])];
        assert!(matches!(plan_script(&p), Err(VmxLabError::EmptyStep(_))));
    }

    #[test]
    fn guest_paths_stay_in_the_root() {
        assert_eq!(
            guest_relative(Path::new("/lib/vmxray/l1.bin")).unwrap(),
            PathBuf::from("lib/vmxray/l1.bin")
        );
        for bad in ["lib/x", "/", "/a/../b"] {
            assert!(guest_relative(Path::new(bad)).is_err(), "{bad}");
        }
    }

    fn disk_with(frames: &[(&str, &[u8])], end: bool) -> (PathBuf, PathBuf) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vmxlab-frames-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut bytes = Vec::new();
        let pad = |b: &mut Vec<u8>| b.resize(b.len().next_multiple_of(512), 0);
        for (name, content) in frames {
            bytes.extend_from_slice(format!("VMXLAB-FILE {} {name}\n", content.len()).as_bytes());
            pad(&mut bytes);
            bytes.extend_from_slice(content);
            pad(&mut bytes);
        }
        if end {
            bytes.extend_from_slice(b"VMXLAB-END\n");
            pad(&mut bytes);
        }
        bytes.resize(bytes.len() + 4096, 0);
        let disk = dir.join("disk.img");
        fs::write(&disk, bytes).unwrap();
        (disk, dir.join("out"))
    }

    #[test]
    fn frames_unpack_in_order() {
        let big = vec![7u8; 1300];
        let (disk, out) = disk_with(&[("host.txt", b"release 6.1"), ("s/trace.dat", &big)], true);
        let results = read_results(&disk, &out).unwrap();
        assert!(results.complete);
        assert_eq!(results.files.len(), 2);
        assert_eq!(fs::read(out.join("s/trace.dat")).unwrap(), big);
        assert_eq!(fs::read_to_string(out.join("host.txt")).unwrap(), "release 6.1");
    }

    #[test]
    fn a_missing_end_is_an_incomplete_run() {
        let (disk, out) = disk_with(&[("a", b"x"), ("", b"")], false);
        // The second header has an empty name: a bad frame, not a panic.
        assert!(matches!(read_results(&disk, &out), Err(VmxLabError::BadFrame { block: 2, .. })));
        let (disk, out) = disk_with(&[("a", b"x")], false);
        let results = read_results(&disk, &out).unwrap();
        assert!(!results.complete);
        assert_eq!(results.files.len(), 1);
    }

    #[test]
    fn frames_cannot_escape_or_overrun() {
        for name in ["../evil", "/abs", "a//b", "a/./b"] {
            let (disk, out) = disk_with(&[(name, b"x")], true);
            assert!(read_results(&disk, &out).is_err(), "{name}");
        }
        let (disk, out) = disk_with(&[], false);
        let mut bytes = fs::read(&disk).unwrap();
        bytes[..32].copy_from_slice(b"VMXLAB-FILE 999999999 x\n\0\0\0\0\0\0\0\0");
        fs::write(&disk, bytes).unwrap();
        assert!(read_results(&disk, &out).is_err());
    }
}
