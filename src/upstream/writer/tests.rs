//! The writer's policy decisions, checked on a handle whose queue no task
//! drains: the test plays the writer task (taking frames, making progress).

use super::*;

/// A policy with small, readable numbers: pushed back over 100 bytes,
/// watched over 200, refused over 400.
const SMALL: WriterPolicy = WriterPolicy {
    peer: "thoth",
    congested_above: Some(100),
    watch_above: 200,
    stall_after: STALL_AFTER,
    max_queued_bytes: 400,
    close_linger: Duration::ZERO,
    budgeted: false,
};

/// A handle, its queue, and what its owner was told.
fn writer(
    policy: WriterPolicy,
) -> (
    SocketWriter,
    mpsc::UnboundedReceiver<Outgoing>,
    Arc<Mutex<Vec<String>>>,
) {
    let told = Arc::new(Mutex::new(Vec::new()));
    let sink = told.clone();
    let on_failure: OnFailure = Arc::new(move |reason| sink.lock().unwrap().push(reason));
    let (writer, queue) = SocketWriter::unattached(policy, Arc::default(), on_failure);
    (writer, queue, told)
}

fn audio(len: usize) -> WsMessage {
    WsMessage::Binary(Bytes::from(vec![0u8; len]))
}

/// What the writer task does with the next queued frame.
fn take_one(writer: &SocketWriter, queue: &mut mpsc::UnboundedReceiver<Outgoing>) {
    let outgoing = queue.try_recv().expect("a queued frame");
    writer.progress.took(outgoing.counted);
    writer.progress.written.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn a_frame_over_the_hard_bound_is_refused_as_stalled_and_the_owner_hears_why() {
    let (writer, _queue, told) = writer(WriterPolicy {
        watch_above: 400,
        ..SMALL
    });
    assert_eq!(writer.send(audio(300)), Ok(()));
    assert_eq!(writer.send(audio(101)), Err(SendFailure::Stalled));
    assert_eq!(
        *told.lock().unwrap(),
        vec!["thoth is not reading (outbound queue at its hard bound)".to_string()]
    );
    // Exactly at the bound is still fine.
    assert_eq!(writer.send(audio(100)), Ok(()));
}

#[test]
fn frames_the_writer_took_no_longer_count_against_the_bound() {
    let (writer, mut queue, told) = writer(WriterPolicy::MISTRAL);
    let half = MISTRAL_MAX_QUEUE_BYTES / 2;
    assert_eq!(writer.send(audio(half)), Ok(()));
    assert_eq!(writer.send(audio(half)), Ok(()));
    assert_eq!(writer.send(audio(1)), Err(SendFailure::Stalled));
    take_one(&writer, &mut queue);
    assert_eq!(writer.send(audio(1)), Ok(()));
    assert_eq!(told.lock().unwrap().len(), 1);
    assert!(told.lock().unwrap()[0].starts_with("Mistral is not reading"));
}

#[test]
fn a_writer_whose_task_is_gone_refuses_as_closed_and_counts_nothing() {
    let (writer, queue, told) = writer(SMALL);
    drop(queue);
    assert_eq!(writer.send(audio(50)), Err(SendFailure::Closed));
    assert_eq!(writer.send_uncounted(audio(50)), Err(SendFailure::Closed));
    assert_eq!(writer.progress.queued.bytes(), 0);
    // Gone is not a stall: the owner learns of it from the writer task.
    assert!(told.lock().unwrap().is_empty());
}

#[test]
fn congestion_starts_above_the_mark_and_ends_once_drained_below_it() {
    let (writer, mut queue, _told) = writer(SMALL);
    writer.send(audio(100)).unwrap();
    assert!(!writer.congested(), "at the mark is not over it");
    writer.send(audio(1)).unwrap();
    assert!(writer.congested());
    take_one(&writer, &mut queue);
    assert!(!writer.congested());
}

#[test]
fn a_policy_without_a_congestion_mark_never_pushes_back() {
    let (writer, _queue, _told) = writer(WriterPolicy::MISTRAL);
    writer.send(audio(MISTRAL_MAX_QUEUE_BYTES)).unwrap();
    assert!(!writer.congested());
}

#[test]
fn uncounted_frames_pass_the_bound_and_do_not_congest() {
    // Replayed audio is bounded by the replay buffers already.
    let (writer, _queue, told) = writer(SMALL);
    for _ in 0..10 {
        writer.send_uncounted(audio(400)).unwrap();
    }
    assert!(!writer.congested());
    assert_eq!(writer.send(audio(400)), Ok(()));
    assert!(told.lock().unwrap().is_empty());
}

#[test]
fn over_the_watch_mark_with_no_write_progress_is_a_stall() {
    let (writer, _queue, told) = writer(WriterPolicy {
        stall_after: Duration::ZERO,
        ..SMALL
    });
    writer.send(audio(150)).unwrap();
    // Newly over the watch mark: watched from now, not refused yet.
    assert_eq!(writer.send(audio(100)), Ok(()));
    assert_eq!(writer.send(audio(10)), Err(SendFailure::Stalled));
    assert_eq!(
        *told.lock().unwrap(),
        vec!["thoth is not reading (no write progress)".to_string()]
    );
}

#[test]
fn over_the_watch_mark_a_writer_that_progresses_is_not_stalled() {
    let (writer, mut queue, told) = writer(WriterPolicy {
        stall_after: Duration::ZERO,
        ..SMALL
    });
    for _ in 0..4 {
        writer.send(audio(60)).unwrap(); // the fourth goes over the mark
    }
    for _ in 0..3 {
        take_one(&writer, &mut queue); // progress: watched afresh
        assert_eq!(writer.send(audio(60)), Ok(()));
    }
    assert!(told.lock().unwrap().is_empty());
}

#[test]
fn back_under_the_watch_mark_the_watch_ends() {
    let (writer, mut queue, _told) = writer(SMALL);
    writer.send(audio(150)).unwrap();
    writer.send(audio(100)).unwrap();
    assert!(writer.progress.watching.load(Ordering::Relaxed));
    take_one(&writer, &mut queue);
    writer.send(audio(1)).unwrap();
    assert!(!writer.progress.watching.load(Ordering::Relaxed));
}

#[test]
fn the_close_frame_is_queued_past_the_bound() {
    let (writer, mut queue, _told) = writer(SMALL);
    writer.send(audio(400)).unwrap();
    writer.close(CloseReason::from(awc::ws::CloseCode::Normal));
    take_one(&writer, &mut queue);
    let last = queue.try_recv().expect("the close frame");
    assert!(last.message.is_close());
    assert_eq!(last.counted, 0);
}

#[test]
fn live_bytes_count_in_the_shared_counter_until_written_or_dropped_with_the_queue() {
    let shared = Arc::new(QueueGauge::default());
    let on_failure: OnFailure = Arc::new(|_| {});
    let (writer, queue) = SocketWriter::unattached(SMALL, shared.clone(), on_failure);
    let mut queue = Unwritten {
        queue,
        progress: writer.progress.clone(),
    };
    writer.send(audio(30)).unwrap();
    writer.send(audio(50)).unwrap();
    writer.send_uncounted(audio(1000)).unwrap();
    assert_eq!(shared.bytes(), 80);
    let first = queue.queue.try_recv().unwrap();
    writer.progress.took(first.counted);
    assert_eq!(shared.bytes(), 50);
    // The writer ends with frames unwritten: they no longer count, so the
    // next socket of the endpoint does not look congested.
    drop(queue);
    assert_eq!(shared.bytes(), 0);
    assert_eq!(writer.send(audio(10)), Err(SendFailure::Closed));
    assert_eq!(shared.bytes(), 0);
}
