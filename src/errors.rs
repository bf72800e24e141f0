//! An error as one line: its message, then each cause (`source()`) after ": ". Every
//! hushvm error keeps its cause once, as its source and not in its own message, so this
//! (or anyhow's chain, in main.rs) is how an error reaches a user.

use std::error::Error;
use std::fmt::Write;

/// `error` and its causes, joined by ": ".
pub fn chain(error: &dyn Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let _ = write!(line, ": {next}");
        cause = next.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot open the disk")]
        Open(#[source] std::io::Error),
    }

    #[test]
    fn each_cause_appears_once_in_order() {
        let error = Outer::Open(std::io::Error::other("no such file"));
        assert_eq!(chain(&error), "cannot open the disk: no such file");
    }

    /// A failed KVM_RUN stops the VM with its cause kept, not flattened into text.
    #[test]
    fn a_run_failure_keeps_its_cause() {
        use crate::kvm::KvmError;
        use crate::run_loop::{GuestFault, RunError};
        let error = KvmError::Ioctl {
            what: "KVM_RUN",
            source: kvm_ioctls::Error::new(libc::EFAULT),
        };
        let fault = GuestFault::RunFailed(RunError(std::sync::Arc::new(error)));
        let line = chain(&fault);
        assert!(
            line.starts_with("the vCPU cannot run: KVM_RUN failed: "),
            "{line}"
        );
        assert_eq!(line.matches("KVM_RUN").count(), 1, "{line}");
        assert!(fault.source().is_some());
    }
}
