use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::*;

// ractor_cluster's protobuf, written out by hand (its types are private):
// NetworkMessage { control = 3 }, ControlMessage { spawn = 1, terminate = 2,
// ping = 3, pg_join = 5 }, Actor { pid = 1, name = 2 }.

fn varint_bytes(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn varint_field(number: u64, value: u64) -> Vec<u8> {
    let mut out = varint_bytes(number << 3);
    out.extend(varint_bytes(value));
    out
}

fn bytes_field(number: u64, value: &[u8]) -> Vec<u8> {
    let mut out = varint_bytes(number << 3 | 2);
    out.extend(varint_bytes(value.len() as u64));
    out.extend_from_slice(value);
    out
}

fn actor(pid: u64) -> Vec<u8> {
    let mut out = varint_field(1, pid);
    out.extend(bytes_field(2, format!("troupe.agent.{pid}").as_bytes()));
    out
}

fn control(number: u64, body: &[u8]) -> Vec<u8> {
    bytes_field(3, &bytes_field(number, body))
}

fn spawn(pids: &[u64]) -> Vec<u8> {
    let actors: Vec<u8> = pids
        .iter()
        .flat_map(|&pid| bytes_field(1, &actor(pid)))
        .collect();
    control(1, &actors)
}

fn pg_join(group: &str, pids: &[u64]) -> Vec<u8> {
    let mut join = bytes_field(1, group.as_bytes());
    join.extend(pids.iter().flat_map(|&pid| bytes_field(2, &actor(pid))));
    join.extend(bytes_field(3, b"default"));
    control(5, &join)
}

fn terminate_packed(pids: &[u64]) -> Vec<u8> {
    let packed: Vec<u8> = pids.iter().flat_map(|&pid| varint_bytes(pid)).collect();
    control(2, &bytes_field(1, &packed))
}

fn terminate_unpacked(pids: &[u64]) -> Vec<u8> {
    let ids: Vec<u8> = pids.iter().flat_map(|&pid| varint_field(1, pid)).collect();
    control(2, &ids)
}

fn ping() -> Vec<u8> {
    control(3, &bytes_field(1, &varint_field(1, 1_700_000_000)))
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u64).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn limits() -> SessionLimits {
    SessionLimits {
        remote_actors: 4,
        groups: 2,
        ..SessionLimits::standard()
    }
}

/// Reads everything `frames` make through a guard, `chunk` bytes a read.
async fn through_guard(
    limits: SessionLimits,
    frames: &[Vec<u8>],
    chunk: usize,
) -> io::Result<Vec<u8>> {
    let bytes: Vec<u8> = frames.iter().flat_map(|body| framed(body)).collect();
    let (mut peer, ours) = tokio::io::duplex(1 << 16);
    let writer = tokio::spawn(async move {
        // The guard may end the stream early: what it did not read is moot.
        let _ = peer.write_all(&bytes).await;
    });
    let mut guard = GuardedRead::new(ours, limits, "test peer".into());
    let mut read = Vec::new();
    let mut buf = vec![0; chunk];
    let outcome = loop {
        match guard.read(&mut buf).await {
            Ok(0) => break Ok(read),
            Ok(n) => read.extend_from_slice(&buf[..n]),
            Err(err) => break Err(err),
        }
    };
    writer.abort();
    outcome
}

#[tokio::test]
async fn frames_pass_whole_and_unchanged_in_reads_of_any_size() {
    let frames = vec![
        ping(),
        spawn(&[11]),
        Vec::new(),
        pg_join("troupe.agents", &[11]),
        b"not protobuf at all: ractor refuses it, not the guard".to_vec(),
        terminate_packed(&[11]),
        vec![7; 100_000],
    ];
    let whole: Vec<u8> = frames.iter().flat_map(|body| framed(body)).collect();
    for chunk in [1, 3, 8, 4096, 1 << 20] {
        let read = through_guard(limits(), &frames, chunk).await.unwrap();
        assert_eq!(read, whole, "reads of {chunk} bytes");
    }
}

#[tokio::test]
async fn a_frame_over_the_limit_ends_the_session_before_its_body_is_read() {
    let limits = SessionLimits {
        frame_bytes: 1000,
        ..limits()
    };
    let mut bytes = framed(&ping());
    bytes.extend_from_slice(&1001u64.to_be_bytes());
    let (mut peer, ours) = tokio::io::duplex(1 << 16);
    // No body follows: the guard must not wait for one.
    peer.write_all(&bytes).await.unwrap();
    let mut guard = GuardedRead::new(ours, limits, "test peer".into());
    let mut first = vec![0; framed(&ping()).len()];
    guard.read_exact(&mut first).await.unwrap();
    let err = guard.read(&mut [0; 64]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(
        err.to_string()
            .contains("1001 bytes, over the limit of 1000"),
        "{err}"
    );
}

#[tokio::test]
async fn more_live_remote_actors_than_the_bound_end_the_session() {
    // Four live at most: 1, 2, 3 spawned; 3 and 4 joined (3 counted once);
    // 1 and 2 ended (packed, then unpacked); 5 and 6 make four again.
    let within = vec![
        spawn(&[1, 2, 3]),
        pg_join("troupe.agents", &[3, 4]),
        terminate_packed(&[1]),
        terminate_unpacked(&[2]),
        spawn(&[5, 6]),
    ];
    through_guard(limits(), &within, 4096).await.unwrap();

    let mut past = within.clone();
    past.push(spawn(&[7]));
    let err = through_guard(limits(), &past, 4096).await.unwrap_err();
    assert!(
        err.to_string().contains("more than 4 live remote actors"),
        "{err}"
    );
}

#[tokio::test]
async fn actors_joined_to_more_groups_than_the_bound_end_the_session() {
    let within = vec![pg_join("a", &[1]), pg_join("b", &[1]), pg_join("a", &[2])];
    through_guard(limits(), &within, 4096).await.unwrap();
    let mut past = within.clone();
    past.push(pg_join("c", &[1]));
    let err = through_guard(limits(), &past, 4096).await.unwrap_err();
    assert!(
        err.to_string().contains("more than 2 process groups"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_frames_is_read_at_the_bound_rate_and_lost_none() {
    let limits = SessionLimits {
        frames_per_s: 100.0,
        frame_burst: 10.0,
        ..limits()
    };
    let frames: Vec<Vec<u8>> = (0..110).map(|_| ping()).collect();
    let started = Instant::now();
    let read = through_guard(limits, &frames, 4096).await.unwrap();
    let took = started.elapsed();
    assert_eq!(
        read.len(),
        frames.iter().map(|f| framed(f).len()).sum::<usize>()
    );
    // 10 in the burst, then 100 at 100 a second.
    assert!(
        took >= Duration::from_millis(990) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_bytes_is_read_at_the_bound_rate() {
    let limits = SessionLimits {
        bytes_per_s: 10_000.0,
        byte_burst: 10_000.0,
        ..limits()
    };
    // 5 frames of 10,008 bytes: the burst for the first, then 1 s each.
    let frames: Vec<Vec<u8>> = (0..5).map(|_| vec![1; 10_000]).collect();
    let started = Instant::now();
    through_guard(limits, &frames, 4096).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn the_announcement_reader_takes_only_what_it_follows() {
    assert_eq!(
        Announced::of(&pg_join("g", &[300, 2])),
        Some(Announced {
            actors: vec![300, 2],
            ended: vec![],
            group: Some(("default".into(), "g".into()))
        })
    );
    assert_eq!(
        Announced::of(&terminate_packed(&[1, 1 << 40])).map(|a| a.ended),
        Some(vec![1, 1 << 40])
    );
    assert_eq!(Announced::of(&ping()), None);
    // Cut short anywhere, or not protobuf: not followed (ractor refuses it).
    let join = spawn(&[1, 2, 3]);
    for cut in 0..join.len() {
        let _ = Announced::of(&join[..cut]);
    }
    assert_eq!(Announced::of(&[0xff; 12]), None);
    assert_eq!(Announced::of(&[]), None);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_reads_nothing_is_cut_off_after_the_limit() {
    let (_peer, ours) = tokio::io::duplex(1024);
    let mut write = DeadlineWrite::new(ours, Duration::from_secs(10), "test peer".into());
    let started = Instant::now();
    let err = write.write_all(&[0; 1 << 20]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(err.to_string().contains("read nothing for 10s"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_that_keeps_reading_keeps_its_session() {
    let (mut peer, ours) = tokio::io::duplex(1024);
    let reader = tokio::spawn(async move {
        let mut total = 0;
        let mut buf = [0; 1024];
        while total < 20 * 1024 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            total += peer.read(&mut buf).await.unwrap();
        }
        total
    });
    let mut write = DeadlineWrite::new(ours, Duration::from_secs(5), "test peer".into());
    let started = Instant::now();
    write.write_all(&[0; 20 * 1024]).await.unwrap();
    write.flush().await.unwrap();
    // Far longer than the limit in all, never that long without progress.
    assert!(started.elapsed() > Duration::from_secs(15));
    assert_eq!(reader.await.unwrap(), 20 * 1024);
}
