//! Small payloads in the task's name (docs/protocol.md): our worker takes the payload of a
//! task id of our client's form from the name, and reads `/data/<id>` for any other id.

mod support;

use support::{eventually_async, seed_result, wait_ready, TestCluster, LONG};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_takes_a_small_payload_from_the_task_name_and_reads_others_from_data() {
    let tc = TestCluster::new("inline-payload").await;
    let zk = tc.inspector().await;
    let master = tc.master("m1");
    let mut worker = tc.worker("w1", "seed");
    wait_ready(&mut worker).await;

    // "from the name" in unpadded base64url; no /data node at all: a read would fail the task.
    let named = "t1f-0~ZnJvbSB0aGUgbmFtZQ";
    zk.put(&format!("/tasks/{named}"), b"", false).await;
    // A foreign id, and a lookalike whose encoding is not base64url: both read from /data.
    let foreign = [("plain-1", "from data"), ("t1f-1~not*base64", "from data too")];
    for (id, payload) in foreign {
        zk.put(&format!("/data/{id}"), payload.as_bytes(), false).await;
        zk.put(&format!("/tasks/{id}"), b"", false).await;
    }

    for (id, payload) in [(named, "from the name")].into_iter().chain(foreign) {
        let result = eventually_async("a result", LONG, || async {
            zk.data(&format!("/tasks/{id}")).await.filter(|r| !r.is_empty())
        })
        .await;
        assert_eq!(String::from_utf8_lossy(&result), seed_result(payload), "task {id}");
    }
    master.assert_no_panic();
    worker.assert_no_panic();
}
