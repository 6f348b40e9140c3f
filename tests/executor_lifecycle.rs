//! A job's lifecycle through a real [`Executor`] (and, where the wire matters, a real server):
//! exactly one `process.completed` even when a hook panics, and jobs that wait for the hooks
//! of the generation in force (loaded late, never loaded, canceled or closed while waiting).

use crate::util::{WAIT, Ws, test_config};
use ccx::config::ExecConfig;
use ccx::events::{Completion, Event, JobStatus};
use ccx::executor::{
    Accepted, ExecError, Executor, Hooks, JobContext, JobRequest, PostResult, PreResult,
    PreVerdict, Session,
};
use ccx::jobs::ProcessOutcome;
use ccx::protocol::ControlType;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Hooks that allow everything, tag `process.started` with their name (so a test sees which
/// generation's hooks ran), record the commands they saw, and panic on request.
struct TestHooks {
    name: &'static str,
    seen: Mutex<Vec<String>>,
}

impl TestHooks {
    fn new(name: &'static str) -> Arc<TestHooks> {
        Arc::new(TestHooks {
            name,
            seen: Mutex::new(Vec::new()),
        })
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Hooks for TestHooks {
    fn pre<'a>(&'a self, _: &'a JobContext, request: JobRequest) -> BoxFuture<'a, PreResult> {
        Box::pin(async move {
            self.seen.lock().unwrap().push(request.command.clone());
            if request.command.contains("panic-in-pre") {
                panic!("a pre-hook that panics");
            }
            PreResult {
                verdict: PreVerdict::Allow {
                    request: Box::new(request),
                    // The generation's name travels as the one "modifying" hook.
                    info: Some(ccx::events::PreHooks {
                        received: None,
                        modified_by: vec![self.name.to_string()],
                        reports: Vec::new(),
                    }),
                },
                warnings: Vec::new(),
            }
        })
    }

    fn post<'a>(
        &'a self,
        _: &'a JobContext,
        request: &'a JobRequest,
        _: &'a ProcessOutcome,
    ) -> BoxFuture<'a, PostResult> {
        Box::pin(async move {
            if request.command.contains("panic-in-post") {
                panic!("a post-hook that panics");
            }
            PostResult::default()
        })
    }
}

fn config(load_timeout: Duration) -> ExecConfig {
    let mut c = test_config().execution;
    c.hooks_load_timeout = load_timeout;
    c
}

fn request(command: &str) -> JobRequest {
    JobRequest::new(command.into(), None, None, BTreeMap::new()).unwrap()
}

/// A session on `exec` and the receiving end of its events.
fn session(exec: &Arc<Executor>) -> (Session, Events) {
    let (tx, rx) = mpsc::channel(64);
    (
        exec.session("test".into(), tx, Default::default()),
        Events(rx),
    )
}

struct Events(mpsc::Receiver<Event>);

impl Events {
    async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.0.recv())
            .await
            .expect("an event in time")
            .expect("session open")
    }

    /// Every event of `job` up to and including its `process.completed`; fails on another
    /// job's event, so the order of jobs is checked too.
    async fn job(&mut self, job: &str) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let e = self.next().await;
            assert_eq!(e.job_id().map(|j| &**j), Some(job), "{e:?}");
            let done = matches!(e, Event::Completed(_));
            events.push(e);
            if done {
                return events;
            }
        }
    }

    /// Asserts nothing more arrives for a while (no second terminal event, say).
    async fn quiet(&mut self) {
        let more = tokio::time::timeout(Duration::from_millis(300), self.0.recv()).await;
        assert!(matches!(more, Err(_) | Ok(None)), "unexpected {more:?}");
    }
}

fn completion(events: &[Event]) -> &Completion {
    let n = events
        .iter()
        .filter(|e| matches!(e, Event::Completed(_)))
        .count();
    assert_eq!(n, 1, "exactly one process.completed: {events:?}");
    match events.last() {
        Some(Event::Completed(c)) => c,
        other => panic!("process.completed comes last: {other:?}"),
    }
}

fn started_by(events: &[Event]) -> Value {
    events
        .iter()
        .find_map(|e| match e {
            Event::Started(s) => s.hooks.as_ref().map(|h| json!(h.modified_by[0])),
            _ => None,
        })
        .expect("process.started")
}

fn output(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Output(o) => Some(o.data.as_str()),
            _ => None,
        })
        .collect()
}

fn job_id(a: &Accepted) -> String {
    a.job_id().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_post_hook_ends_its_job_failed_once_and_the_session_goes_on() {
    let exec = Executor::new(config(WAIT), TestHooks::new("g1"));
    let (s, mut events) = session(&exec);
    let accepted = s
        .execute(request("sleep 0.2; echo one # panic-in-post"))
        .await
        .unwrap();
    assert!(matches!(accepted, Accepted::Started { .. }), "{accepted:?}");
    let first = job_id(&accepted);
    // Dropping the answer lets the job's events flow.
    drop(accepted);
    let second = s.execute(request("echo two")).await.unwrap();
    assert!(matches!(second, Accepted::Queued { position: 1, .. }));
    let second = job_id(&second);

    let ev = events.job(&first).await;
    assert_eq!(output(&ev), "one\n");
    let c = completion(&ev);
    assert_eq!(c.status, JobStatus::Failed);
    assert!(
        c.error.as_deref().unwrap().contains("failed internally"),
        "{c:?}"
    );

    let ev = events.job(&second).await;
    assert_eq!(output(&ev), "two\n");
    assert_eq!(completion(&ev).status, JobStatus::Completed);
    events.quiet().await;
    assert_eq!(exec.running_jobs(), 0);
    let st = s.status().await;
    assert!(st.running.is_none() && st.queued.is_empty(), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_pre_hook_answers_failed_with_one_terminal_event() {
    let exec = Executor::new(config(WAIT), TestHooks::new("g1"));
    let (s, mut events) = session(&exec);
    let a = s.execute(request("true # panic-in-pre")).await.unwrap();
    let Accepted::Failed {
        job_id: failed,
        error,
    } = &a
    else {
        panic!("{a:?}")
    };
    assert!(error.contains("failed internally"), "{error}");
    let c = completion(&events.job(failed).await).clone();
    assert_eq!(c.status, JobStatus::Failed);
    assert_eq!(c.error.as_deref(), Some(error.as_str()));
    events.quiet().await;
    // The session is free for the next job at once.
    let b = s.execute(request("echo next")).await.unwrap();
    assert!(matches!(b, Accepted::Started { .. }), "{b:?}");
    let next = job_id(&b);
    drop(b);
    let ev = events.job(&next).await;
    assert_eq!(output(&ev), "next\n");
    assert_eq!(exec.running_jobs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_post_hook_through_the_server_gives_one_completed() {
    let cfg = test_config();
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let exec = Executor::new(cfg.execution.clone(), TestHooks::new("g1"));
    let state = ccx::server::ServerState::new(exec.clone(), cfg.server.clone(), None, None);
    tokio::spawn(ccx::server::serve(listener, state, std::future::pending()));
    let mut ws = Ws::connect(&format!("ws://{addr}/ws")).await;
    let first = ws
        .call(
            "execute",
            json!({"command": "sleep 0.2; echo one # panic-in-post"}),
        )
        .await;
    assert_eq!(first["result"]["status"], "started", "{first}");
    let second = ws.call("execute", json!({"command": "echo two"})).await;
    assert_eq!(second["result"]["status"], "queued", "{second}");
    let ev = ws
        .collect(first["result"]["job_id"].as_str().unwrap())
        .await;
    let done: Vec<_> = ev
        .iter()
        .filter(|e| e["method"] == "process.completed")
        .collect();
    assert_eq!(done.len(), 1, "{ev:?}");
    assert_eq!(done[0]["params"]["status"], "failed");
    assert!(
        done[0]["params"]["error"]
            .as_str()
            .unwrap()
            .contains("failed internally")
    );
    let ev = ws
        .collect(second["result"]["job_id"].as_str().unwrap())
        .await;
    assert_eq!(crate::util::completion(&ev)["status"], "completed");
    assert_eq!(crate::util::output(&ev, "stdout"), "two\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_waits_for_hooks_and_runs_with_the_generation_that_brought_them() {
    let exec = Executor::loading(config(WAIT), Default::default());
    assert!(!exec.hooks_ready());
    let (s, mut events) = session(&exec);
    let waiting = tokio::spawn({
        let s = s.clone();
        async move { s.execute(request("echo \"$GEN\"")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the job must not start before its hooks"
    );
    // The session still answers while the job waits.
    let st = tokio::time::timeout(Duration::from_secs(2), s.status())
        .await
        .expect("status answers while a job waits for hooks");
    assert!(st.running.is_none(), "{st:?}");

    let hooks = TestHooks::new("g2");
    let mut cfg = config(WAIT);
    cfg.env.insert("GEN".into(), "two".into());
    exec.set_generation(cfg, Some(hooks.clone()));
    assert!(exec.hooks_ready());
    let a = waiting.await.unwrap().unwrap();
    assert!(matches!(a, Accepted::Started { .. }), "{a:?}");
    let id = job_id(&a);
    drop(a);
    let ev = events.job(&id).await;
    // Config and hooks of one generation: its env and its hooks' tag.
    assert_eq!(output(&ev), "two\n");
    assert_eq!(started_by(&ev), "g2");
    assert_eq!(hooks.seen(), vec!["echo \"$GEN\"".to_string()]);
    assert_eq!(completion(&ev).status, JobStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execute_whose_hooks_do_not_load_in_time_is_refused_hooks_not_ready() {
    let exec = Executor::loading(config(Duration::from_millis(200)), Default::default());
    let (s, mut events) = session(&exec);
    let started = Instant::now();
    let err = s.execute(request("echo never")).await.unwrap_err();
    assert!(matches!(err, ExecError::HooksNotReady(_)), "{err:?}");
    assert!(err.to_string().starts_with("hooks not ready: "), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    // A refusal is the answer; no events, and the session is free again.
    events.quiet().await;
    let st = s.status().await;
    assert!(st.running.is_none() && st.queued.is_empty(), "{st:?}");
    exec.set_generation(config(WAIT), Some(TestHooks::new("g2")));
    let a = s.execute(request("echo now")).await.unwrap();
    assert!(matches!(a, Accepted::Started { .. }), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_not_ready_is_error_32006_on_the_wire() {
    let cfg = test_config();
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let exec = Executor::loading(config(Duration::from_millis(200)), Default::default());
    let state = ccx::server::ServerState::new(exec.clone(), cfg.server.clone(), None, None);
    tokio::spawn(ccx::server::serve(listener, state, std::future::pending()));
    let mut ws = Ws::connect(&format!("ws://{addr}/ws")).await;
    let resp = ws.call("execute", json!({"command": "echo x"})).await;
    assert_eq!(resp["error"]["code"], -32006, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("hooks not ready")
    );
}

/// A session with one job running (`sleep`) and one queued behind it, on an executor whose
/// next generation's hooks are still loading when the running job ends.
async fn queued_job_waiting_for_hooks(
    load_timeout: Duration,
) -> (Arc<Executor>, Session, Events, String) {
    let exec = Executor::new(config(load_timeout), TestHooks::new("g1"));
    let (s, mut events) = session(&exec);
    // Dropping the answer lets the job's events flow.
    let first = job_id(&s.execute(request("sleep 0.2")).await.unwrap());
    let queued = s.execute(request("echo \"$GEN\"")).await.unwrap();
    assert!(matches!(queued, Accepted::Queued { position: 1, .. }));
    exec.set_generation(config(load_timeout), None);
    assert_eq!(
        completion(&events.job(&first).await).status,
        JobStatus::Completed
    );
    // The queued job now heads the session and waits; the session still answers.
    let st = loop {
        let st = tokio::time::timeout(Duration::from_secs(2), s.status())
            .await
            .expect("status answers while a job waits for hooks");
        if st.running.is_none() {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(st.queued.len(), 1, "{st:?}");
    assert_eq!(st.queued[0].position, 1);
    let queued = job_id(&queued);
    assert_eq!(&*st.queued[0].job_id, queued);
    (exec, s, events, queued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_waits_for_hooks_and_keeps_its_place() {
    let (exec, s, mut events, waiting) = queued_job_waiting_for_hooks(WAIT).await;
    let behind = job_id(&s.execute(request("echo behind")).await.unwrap());
    let st = s.status().await;
    let order: Vec<_> = st.queued.iter().map(|q| q.job_id.to_string()).collect();
    assert_eq!(order, vec![waiting.clone(), behind.clone()]);
    assert_eq!(st.queued[1].position, 2);
    // Pause/resume do not apply to a job that has not started.
    let err = s.control(ControlType::Pause, None).await.unwrap_err();
    assert!(matches!(err, ExecError::NoSuchJob(_)), "{err:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(exec.running_jobs(), 0);

    let mut cfg = config(WAIT);
    cfg.env.insert("GEN".into(), "three".into());
    exec.set_generation(cfg, Some(TestHooks::new("g3")));
    let ev = events.job(&waiting).await;
    assert_eq!(output(&ev), "three\n");
    assert_eq!(started_by(&ev), "g3");
    assert_eq!(completion(&ev).status, JobStatus::Completed);
    let ev = events.job(&behind).await;
    assert_eq!(completion(&ev).status, JobStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_whose_hooks_do_not_load_in_time_ends_failed() {
    let (_exec, s, mut events, waiting) =
        queued_job_waiting_for_hooks(Duration::from_millis(300)).await;
    let ev = events.job(&waiting).await;
    let c = completion(&ev);
    assert_eq!(c.status, JobStatus::Failed);
    let error = c.error.as_deref().unwrap();
    assert!(error.starts_with("hooks not ready: "), "{error}");
    assert!(!ev.iter().any(|e| matches!(e, Event::Started { .. })));
    events.quiet().await;
    let st = s.status().await;
    assert!(st.running.is_none() && st.queued.is_empty(), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_job_waiting_for_hooks_ends_it_canceled_at_once() {
    let (exec, s, mut events, waiting) = queued_job_waiting_for_hooks(WAIT).await;
    let behind = job_id(&s.execute(request("echo behind")).await.unwrap());
    let t = Instant::now();
    let canceled = s
        .control(ControlType::Cancel, Some(&waiting))
        .await
        .unwrap();
    assert_eq!(&*canceled, waiting);
    let ev = events.job(&waiting).await;
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(matches!(ev[0], Event::Canceled { .. }), "{ev:?}");
    assert_eq!(completion(&ev).status, JobStatus::Canceled);
    // The next job now waits in its turn, and runs once hooks arrive.
    exec.set_generation(config(WAIT), Some(TestHooks::new("g2")));
    let ev = events.job(&behind).await;
    assert_eq!(completion(&ev).status, JobStatus::Completed);
    assert_eq!(started_by(&ev), "g2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_a_queued_job_waiting_for_hooks_canceled_at_once() {
    let (exec, s, mut events, waiting) = queued_job_waiting_for_hooks(WAIT).await;
    let behind = job_id(&s.execute(request("echo behind")).await.unwrap());
    tokio::time::timeout(
        Duration::from_secs(5),
        s.close(ccx::executor::Closing::Disconnect),
    )
    .await
    .expect("close does not wait for hooks");
    // The dropped queued job's terminal event comes first, then the waiting one's.
    let ev = events.job(&behind).await;
    assert_eq!(completion(&ev).status, JobStatus::Canceled);
    let ev = events.job(&waiting).await;
    assert_eq!(completion(&ev).status, JobStatus::Canceled);
    events.quiet().await;
    // Hooks arriving later start nothing.
    exec.set_generation(config(WAIT), Some(TestHooks::new("g2")));
    events.quiet().await;
    assert!(matches!(
        s.execute(request("true")).await,
        Err(ExecError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_while_an_execute_waits_for_hooks_answers_it_at_once() {
    let exec = Executor::loading(config(WAIT), Default::default());
    let (s, mut events) = session(&exec);
    let hooks = TestHooks::new("g2");
    let waiting = tokio::spawn({
        let s = s.clone();
        async move { s.execute(request("echo never")).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(
        Duration::from_secs(5),
        s.close(ccx::executor::Closing::Disconnect),
    )
    .await
    .expect("close does not wait for hooks");
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the execute is answered")
        .unwrap();
    assert!(matches!(answer, Err(ExecError::Closed)), "{answer:?}");
    exec.set_generation(config(WAIT), Some(hooks.clone()));
    events.quiet().await;
    assert!(hooks.seen().is_empty(), "no hook ran for a closed session");
}
