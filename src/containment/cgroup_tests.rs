//! `delegate_controllers` over a fake cgroup directory (plain files): which controllers it
//! asks for and when. The EBUSY path (processes in the parent) needs a cgroup v2 hierarchy
//! with the `memory` or `pids` controller, which these machines do not have.

use super::delegate_controllers;
use std::fs;

fn fake(controllers: &str, subtree: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("cgroup.controllers"), controllers).unwrap();
    fs::write(dir.path().join("cgroup.subtree_control"), subtree).unwrap();
    dir
}

fn subtree(dir: &tempfile::TempDir) -> String {
    fs::read_to_string(dir.path().join("cgroup.subtree_control")).unwrap()
}

#[test]
fn offered_limit_controllers_are_passed_down() {
    let dir = fake("cpuset cpu io memory hugetlb pids rdma\n", "");
    delegate_controllers(dir.path(), Some("ccx-1-server"), 1).unwrap();
    assert_eq!(subtree(&dir), "+memory +pids");
    // No leaf was needed.
    assert!(!dir.path().join("ccx-1-server").exists());
}

#[test]
fn only_missing_controllers_are_asked_for() {
    let dir = fake("cpu memory pids\n", "memory\n");
    delegate_controllers(dir.path(), None, 1).unwrap();
    // Written over the start of the plain file, as to cgroupfs (no truncation).
    let written = subtree(&dir);
    assert!(
        written.starts_with("+pids") && !written.contains("+memory"),
        "{written:?}"
    );
}

#[test]
fn nothing_is_written_when_nothing_is_offered_or_missing() {
    // The hybrid layout of these machines: no memory or pids in the v2 hierarchy.
    let dir = fake("cpuset cpu io\n", "");
    delegate_controllers(dir.path(), None, 1).unwrap();
    assert_eq!(subtree(&dir), "");
    let dir = fake("memory pids\n", "memory pids\n");
    delegate_controllers(dir.path(), None, 1).unwrap();
    assert_eq!(subtree(&dir), "memory pids\n");
}

#[test]
fn a_refusal_names_the_controllers() {
    let dir = fake("memory pids\n", "");
    // A directory where the control file should be: the write fails (not EBUSY).
    fs::remove_file(dir.path().join("cgroup.subtree_control")).unwrap();
    fs::create_dir(dir.path().join("cgroup.subtree_control")).unwrap();
    let why = delegate_controllers(dir.path(), Some("ccx-1-server"), 1).unwrap_err();
    assert!(why.contains("[\"memory\", \"pids\"]"), "{why}");
}
