//! A test project and the imgbuild command builder every test file uses.
//!
//! A [`Project`] is a scratch directory laid out as a user's: `profiles/` (a
//! copy of the example profiles or of `docs/examples/ha`), its own `secrets/`
//! and `cache/`, and `firmware-manifests/` when a test overrides a manifest.
//! Commands run in it with the loopback k3s release of `mirror` and nothing
//! from the developer's environment; bakes take the stock-layout base images
//! of `fixtures`.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::fixtures::{Layout, fixtures};
use super::harness::{command, q, repo, scratch, sh, text};

pub struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    /// A project with no profiles yet (`init` makes them, or the test writes them).
    pub fn empty() -> Project {
        Project { dir: scratch() }
    }

    /// A copy of the shipped example profiles (`profiles/`).
    pub fn example() -> Project {
        Project::from_profiles(&repo().join("profiles"))
    }

    /// A copy of the three-server HA example (`docs/examples/ha`) as `profiles/`.
    pub fn ha() -> Project {
        Project::from_profiles(&repo().join("docs/examples/ha"))
    }

    /// A copy of the profile directory `src` as `profiles/`.
    pub fn from_profiles(src: &Path) -> Project {
        let p = Project::empty();
        sh(&format!("cp -r {} {}", q(src), q(&p.profiles())));
        p
    }

    /// The project directory, where commands run.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path().join(rel)
    }

    pub fn profiles(&self) -> PathBuf {
        self.join("profiles")
    }

    pub fn secrets(&self) -> PathBuf {
        self.join("secrets")
    }

    pub fn cache(&self) -> PathBuf {
        self.join("cache")
    }

    /// Manifest overrides: imgbuild finds them beside `profiles/`.
    pub fn manifests(&self) -> PathBuf {
        self.join("firmware-manifests")
    }

    /// Creates `rel` (and its parents) in the project; returns its path.
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let d = self.join(rel);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The text of the project file `rel`.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.join(rel))
            .unwrap_or_else(|e| panic!("reading {rel} of the test project: {e}"))
    }

    /// Writes the project file `rel`, making its directory.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> &Self {
        let p = self.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap();
        self
    }

    /// Replaces the first `from` (which must be there) by `to` in the project file `rel`.
    pub fn edit(&self, rel: &str, from: &str, to: &str) -> &Self {
        let t = self.read(rel);
        assert!(t.contains(from), "{rel} has no {from:?}");
        self.write(rel, t.replacen(from, to, 1))
    }

    /// Appends `more` to the project file `rel`.
    pub fn append(&self, rel: &str, more: &str) -> &Self {
        let t = self.read(rel);
        self.write(rel, t + more)
    }

    /// Removes the project file `rel`, which must exist.
    pub fn remove(&self, rel: &str) -> &Self {
        std::fs::remove_file(self.join(rel))
            .unwrap_or_else(|e| panic!("removing {rel} of the test project: {e}"));
        self
    }

    /// Copies the shipped manifest of `board` into `firmware-manifests/`, where
    /// imgbuild takes it over the built-in one; returns its path.
    pub fn override_manifest(&self, board: &str) -> PathBuf {
        let to = self.manifests().join(format!("{board}.yaml"));
        std::fs::create_dir_all(self.manifests()).unwrap();
        std::fs::copy(repo().join(format!("firmware-manifests/{board}.yaml")), &to).unwrap();
        to
    }

    /// imgbuild with `args`, run in the project with its profiles, secrets,
    /// cache and the loopback k3s mirror (environment variables, so that a
    /// flag given in `args` wins), and no other `IMGBUILD_` variable.
    pub fn imgbuild<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Cmd {
        let mut c = command();
        c.current_dir(self.path())
            .env("IMGBUILD_PROFILES", self.profiles())
            .env("IMGBUILD_SECRETS", self.secrets())
            .env("IMGBUILD_CACHE_DIR", self.cache())
            .env("IMGBUILD_K3S_MIRROR", super::mirror::env().mirror_url());
        Cmd::new(c).args(args)
    }

    /// A bake of `target` (a file name `<node>.<board>.<format>`, relative to
    /// the project or absolute) from the fixture base of its board, with a
    /// JSON report: `.json()[0]` is the target's.
    pub fn bake(&self, target: impl AsRef<Path>) -> Cmd {
        let board = board_of(target.as_ref());
        self.bake_from(target, base(&board))
    }

    /// A bake of `target` from the base image `base`, with a JSON report.
    pub fn bake_from(&self, target: impl AsRef<Path>, base: &Path) -> Cmd {
        self.imgbuild(["--base".as_ref(), base.as_os_str(), "--json".as_ref()])
            .arg(self.join(target))
    }

    /// Bakes `target` from the fixture base of its board: the image and its report.
    pub fn baked(&self, target: impl AsRef<Path>) -> (PathBuf, serde_json::Value) {
        let report = self.bake(&target).json()[0].clone();
        (self.join(target), report)
    }

    /// Bakes `target` from `base`: the image and its report.
    pub fn baked_from(
        &self,
        target: impl AsRef<Path>,
        base: &Path,
    ) -> (PathBuf, serde_json::Value) {
        let report = self.bake_from(&target, base).json()[0].clone();
        (self.join(target), report)
    }

    /// `render <node> --json`: `.json()` is the list of files.
    pub fn render(&self, node: &str) -> Cmd {
        self.imgbuild(["render", node, "--json"])
    }

    /// The library's paths for this project (for calls into the library).
    pub fn paths(&self) -> imgbuild::commands::Paths {
        imgbuild::commands::Paths::resolve_with_secrets(
            self.profiles(),
            None,
            None,
            Some(self.secrets()),
        )
    }

    /// The files `render` gives `node`, with their bytes.
    pub fn rendered(&self, node: &str) -> Vec<imgbuild::plan::RenderedFile> {
        imgbuild::commands::render::render(&self.paths(), node, imgbuild::plan::DEFAULT_BUILD_TIME)
            .unwrap_or_else(|e| panic!("rendering {node}: {e:#}"))
    }

    /// The bytes of `node`'s rendered file `path` on `target` (`seed`, `root`, ...).
    pub fn rendered_file(&self, node: &str, target: &str, path: &str) -> Vec<u8> {
        self.rendered(node)
            .into_iter()
            .find(|f| f.target == target && f.path == path)
            .unwrap_or_else(|| panic!("{node} renders no {target} file {path}"))
            .contents
    }
}

/// The board of a target named `<node>.<board>.<format>`.
pub fn board_of(target: &Path) -> String {
    let name = target.file_name().unwrap().to_string_lossy();
    name.split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("{name} is not <node>.<board>.<format>"))
        .to_string()
}

/// The fixture base image of `board`.
pub fn fixture(board: &str) -> &'static Layout {
    let fx = fixtures();
    match board {
        "rk1" => &fx.rk1,
        "cm4" => &fx.cm4,
        "nuc" => &fx.nuc,
        other => panic!("no fixture base for board {other}"),
    }
}

pub fn base(board: &str) -> &'static Path {
    &fixture(board).path
}

/// `--manifests` and `--overlays` naming the repository's directories (the
/// same files as the built-in ones, as override directories).
pub fn repo_overrides() -> Vec<String> {
    vec![
        "--manifests".into(),
        repo().join("firmware-manifests").display().to_string(),
        "--overlays".into(),
        repo().join("overlays").display().to_string(),
    ]
}

/// `--base <board>=<fixture>` for every board.
pub fn bases() -> Vec<String> {
    ["rk1", "cm4", "nuc"]
        .iter()
        .flat_map(|b| ["--base".to_string(), format!("{b}={}", base(b).display())])
        .collect()
}

/// An imgbuild command being put together; running it gives a [`Run`].
pub struct Cmd {
    cmd: Command,
}

impl Cmd {
    /// Wraps a command made by `harness::command()` (or a project).
    pub fn new(cmd: Command) -> Cmd {
        Cmd { cmd }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.cmd.arg(a);
        self
    }

    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Cmd {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Cmd {
        self.cmd.env(k, v);
        self
    }

    pub fn envs<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Cmd {
        self.cmd.envs(vars);
        self
    }

    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Cmd {
        self.cmd.env_remove(k);
        self
    }

    /// Runs in `dir` instead of the project directory.
    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.cmd.current_dir(dir);
        self
    }

    /// Runs with the file mode creation mask `mask`.
    pub fn umask(mut self, mask: libc::mode_t) -> Cmd {
        use std::os::unix::process::CommandExt;
        // SAFETY: umask(2) is async-signal-safe and touches no memory.
        unsafe {
            self.cmd.pre_exec(move || {
                libc::umask(mask);
                Ok(())
            })
        };
        self
    }

    /// The command itself, to spawn or to set up further.
    pub fn command(self) -> Command {
        self.cmd
    }

    /// What the command is, for failure messages.
    fn shown(&self) -> String {
        let mut s = String::from("imgbuild");
        for a in self.cmd.get_args() {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    pub fn output(mut self) -> Output {
        self.cmd.output().expect("imgbuild runs")
    }

    /// Runs it, whatever its exit status.
    pub fn run(self) -> Run {
        Run::from(&self.output())
    }

    /// Runs it and asserts its exit status.
    pub fn expect_exit(self, code: i32) -> Run {
        let shown = self.shown();
        let r = self.run();
        assert_eq!(r.code, code, "`{shown}` exited {}:\n{}", r.code, r.text);
        r
    }

    /// Runs it and asserts that it succeeded.
    pub fn ok(self) -> Run {
        self.expect_exit(0)
    }

    /// Runs it, asserts that it succeeded, and parses its stdout as JSON.
    pub fn json(self) -> serde_json::Value {
        self.ok().json()
    }
}

/// The exit status and output of one run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout then stderr.
    pub text: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", self.text))
    }
}

impl From<&Output> for Run {
    fn from(out: &Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            text: text(out),
        }
    }
}
