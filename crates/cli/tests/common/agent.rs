//! `coffer agent` run by a test: started on a configuration, its log in a file, killed
//! (SIGKILL) when dropped.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;

/// The agent, killed (SIGKILL) when dropped.
pub struct Agent {
    /// In a cell so that a wait can ask whether the agent still runs ([`Self::exited`])
    /// while it reads its log.
    pub child: RefCell<Option<Child>>,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(dir: &Path, config: &Path, n: u32) -> Agent {
        let log = dir.join(format!("agent-{n}.log"));
        let f = fs::File::create(&log).unwrap();
        let child = super::agent_command(dir, config)
            .arg("agent")
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        Agent {
            child: RefCell::new(Some(child)),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.borrow().as_ref().unwrap().id()
    }

    /// For [`wait_for`]: once the agent has exited, a report with its log (what a wait
    /// depends on can no longer come).
    pub fn exited(&self) -> Option<String> {
        let status = self.child.borrow_mut().as_mut()?.try_wait().ok().flatten()?;
        Some(format!("the agent exited ({status}): {}", self.log()))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let mut c = self.child.get_mut().take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM, and the agent's exit code (however long its running jobs take to stop).
    pub fn stop(&mut self) -> i32 {
        let mut c = self.child.get_mut().take().unwrap();
        let pid = rustix::process::Pid::from_child(&c);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        c.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.get_mut().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `coffer ARGS` with the configuration `config` (see [`super::agent_command`]), which must
/// exit 0: its stdout.
pub fn run_ok(dir: &Path, config: &Path, args: &[&str]) -> String {
    let o = super::agent_command(dir, config).args(args).output().unwrap();
    assert_eq!(
        super::code(&o),
        0,
        "coffer {args:?}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        super::stderr(&o)
    );
    String::from_utf8(o.stdout).unwrap()
}
