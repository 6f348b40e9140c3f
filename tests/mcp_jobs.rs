//! The MCP job-handle tools (`job_start`, `job_output`, `job_wait`, `job_input`, `job_cancel`,
//! `job_list`)
//! through a real MCP client; `mcp` runs this scenario on each transport.

use crate::mcp::{Session, call_tool, structured};
use serde_json::json;

pub(crate) async fn job_tools_work(session: &mut Session) {
    let client = &session.client;
    // Output in two parts with a pause: the first page comes before the job ends.
    let r = call_tool(
        client,
        "job_start",
        json!({"command": "printf 'part one\\n'; sleep 1; printf 'part two\\n'; exit 4"}),
    )
    .await;
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let job_id = structured(&r)["job_id"].as_str().unwrap().to_string();

    let r = call_tool(
        client,
        "job_wait",
        json!({"job_id": job_id, "timeout_s": 0.3}),
    )
    .await;
    let s = structured(&r);
    assert_eq!(
        (s["status"].as_str(), s["done"].as_bool()),
        (Some("running"), Some(false)),
        "{s}"
    );

    let r = call_tool(client, "job_output", json!({"job_id": job_id})).await;
    let s = structured(&r).clone();
    assert_eq!(s["output"], "part one\n", "{s}");
    assert_eq!(s["next_offset"], 9);
    assert_eq!(s["done"], false);

    let r = call_tool(
        client,
        "job_wait",
        json!({"job_id": job_id, "timeout_s": 30}),
    )
    .await;
    let s = structured(&r);
    assert_eq!(
        (s["status"].as_str(), s["exit_code"].as_i64()),
        (Some("failed"), Some(4)),
        "{s}"
    );

    let r = call_tool(
        client,
        "job_output",
        json!({"job_id": job_id, "offset": 9, "max_bytes": 4}),
    )
    .await;
    let s = structured(&r).clone();
    assert_eq!(
        (s["output"].as_str(), s["next_offset"].as_u64()),
        (Some("part"), Some(13)),
        "{s}"
    );
    let r = call_tool(
        client,
        "job_output",
        json!({"job_id": job_id, "offset": 13}),
    )
    .await;
    let s = structured(&r).clone();
    assert_eq!(s["output"], " two\n", "{s}");
    assert_eq!(
        (s["done"].as_bool(), s["exit_code"].as_i64()),
        (Some(true), Some(4)),
        "{s}"
    );

    // Cancel a long one; the list shows both.
    let r = call_tool(client, "job_start", json!({"command": "sleep 60"})).await;
    let sleeper = structured(&r)["job_id"].as_str().unwrap().to_string();
    let r = call_tool(client, "job_cancel", json!({"job_id": sleeper})).await;
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let r = call_tool(
        client,
        "job_wait",
        json!({"job_id": sleeper, "timeout_s": 30}),
    )
    .await;
    assert_eq!(structured(&r)["status"], "canceled");
    let r = call_tool(client, "job_list", json!({})).await;
    let jobs = structured(&r)["jobs"].as_array().unwrap().clone();
    for id in [&job_id, &sleeper] {
        assert!(jobs.iter().any(|j| j["job_id"] == **id), "{jobs:?}");
    }
    let r = call_tool(client, "job_output", json!({"job_id": "no-such-job"})).await;
    assert_eq!(r.is_error, Some(true), "{r:?}");

    // An interactive program: it waits for a line on its stdin.
    let r = call_tool(
        client,
        "job_start",
        json!({"command": "read answer; echo got-$answer", "stdin_open": true}),
    )
    .await;
    let asker = structured(&r)["job_id"].as_str().unwrap().to_string();
    let r = call_tool(
        client,
        "job_input",
        json!({"job_id": asker, "data": "yes\n", "eof": true}),
    )
    .await;
    assert_eq!(structured(&r)["bytes"], 4, "{r:?}");
    let r = call_tool(
        client,
        "job_wait",
        json!({"job_id": asker, "timeout_s": 30}),
    )
    .await;
    assert_eq!(structured(&r)["status"], "completed", "{r:?}");
    let r = call_tool(client, "job_output", json!({"job_id": asker})).await;
    assert_eq!(structured(&r)["output"], "got-yes\n");
    // An ended job takes none.
    let r = call_tool(client, "job_input", json!({"job_id": asker, "data": "x"})).await;
    assert_eq!(r.is_error, Some(true), "{r:?}");
}
