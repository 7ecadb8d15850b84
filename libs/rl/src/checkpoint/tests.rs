use ciborium::Value;

use super::*;

fn sample() -> Checkpoint {
    Checkpoint {
        env: "CartPole-v1".into(),
        observation_space: Space::unbounded(4),
        action_space: Space::discrete(2),
        config: PpoConfig::default().target_kl(Some(0.05)),
        counters: Counters {
            iteration: 3,
            worker_restarts: 2,
            ..Counters::default()
        },
        recent_episodes: vec![EpisodeStats {
            episode_return: 12.0,
            length: 12,
        }],
        learner: LearnerState {
            variables: vec![],
            adam_m: vec![1.0, f32::NAN],
            adam_v: vec![2.0, f32::INFINITY],
            adam_steps: 3,
            updates: 3,
            reward_scaler: Default::default(),
        },
    }
}

/// Equality that treats NaN as equal to itself (the sample holds one).
fn same(a: &Checkpoint, b: &Checkpoint) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

#[test]
fn round_trip_and_every_kind_of_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.ckpt");
    let c = sample();
    c.write(&path).unwrap();
    assert!(same(&Checkpoint::read(&path).unwrap(), &c));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[8..12], &FORMAT_VERSION.to_le_bytes());
    let p = Path::new("x");
    for cut in [3, 10, HEADER, bytes.len() - 1] {
        let err = Checkpoint::decode(&bytes[..cut], p).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    assert!(matches!(
        Checkpoint::decode(&flipped, p),
        Err(CheckpointError::Corrupt { .. })
    ));
    for version in [0, 9] {
        let mut other = bytes.clone();
        other[8..12].copy_from_slice(&u32::to_le_bytes(version));
        assert!(matches!(
            Checkpoint::decode(&other, p),
            Err(CheckpointError::UnsupportedVersion { found, supported: FORMAT_VERSION, .. }) if found == version
        ));
    }
    assert!(matches!(
        Checkpoint::decode(b"hello, world, not a checkpoint", p),
        Err(CheckpointError::NotACheckpoint { .. })
    ));
    assert!(matches!(
        Checkpoint::decode(b"", p),
        Err(CheckpointError::NotACheckpoint { .. })
    ));
    // A valid frame around a payload that is not a checkpoint.
    let err = Checkpoint::decode(&framed(FORMAT_VERSION, b"\x01\x02"), p).unwrap_err();
    assert!(matches!(err, CheckpointError::Decode { .. }), "{err}");
}

/// The payload as a CBOR value, edited by `edit`, framed again.
fn edited(c: &Checkpoint, edit: impl FnOnce(&mut Vec<(Value, Value)>)) -> Vec<u8> {
    let bytes = c.encode(Path::new("x")).unwrap();
    let mut value: Value = ciborium::from_reader(&bytes[HEADER..]).unwrap();
    let Value::Map(top) = &mut value else {
        panic!("the payload is a map: {value:?}")
    };
    edit(top);
    let mut payload = Vec::new();
    ciborium::into_writer(&value, &mut payload).unwrap();
    framed(FORMAT_VERSION, &payload)
}

fn field<'a>(map: &'a mut [(Value, Value)], name: &str) -> &'a mut Value {
    &mut map
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(name))
        .unwrap_or_else(|| panic!("no field {name}"))
        .1
}

#[test]
fn fields_missing_from_an_older_file_take_their_defaults_and_unknown_ones_are_skipped() {
    let c = sample();
    let bytes = edited(&c, |top| {
        // An older writer had no target_kl, no worker_restarts, no counters
        // at all in the extreme; a newer one has a field we do not know.
        let Value::Map(config) = field(top, "config") else {
            panic!("config is a map")
        };
        config.retain(|(k, _)| k.as_text() != Some("target_kl"));
        config.push((
            Value::Text("a_field_from_the_future".into()),
            Value::Bool(true),
        ));
        top.retain(|(k, _)| k.as_text() != Some("counters"));
        top.push((Value::Text("annotations".into()), Value::Array(vec![])));
    });
    let read = Checkpoint::decode(&bytes, Path::new("x")).unwrap();
    assert_eq!(read.config.target_kl, PpoConfig::default().target_kl);
    assert_eq!(read.config.hidden, c.config.hidden);
    assert_eq!(read.counters, Counters::default());
    assert_eq!(read.recent_episodes, c.recent_episodes);
    // What the model needs is not defaulted: its absence is an error.
    let bytes = edited(&c, |top| {
        top.retain(|(k, _)| k.as_text() != Some("learner"))
    });
    let err = Checkpoint::decode(&bytes, Path::new("x")).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::Decode { reason, .. } if reason.contains("learner")),
        "{err}"
    );
}

#[test]
fn a_format_1_checkpoint_is_still_read() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/checkpoint_v1.ckpt");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        &bytes[8..12],
        &1u32.to_le_bytes(),
        "the fixture is format 1"
    );
    let c = Checkpoint::decode(&bytes, &path).unwrap();
    assert_eq!(c.env, "CartPole-v1");
    assert_eq!(c.action_space, Space::discrete(2));
    assert_eq!(c.config.hidden, vec![8]);
    assert_eq!((c.config.seed, c.config.num_workers), (11, 2));
    assert_eq!(c.counters.iteration, 2);
    assert_eq!(c.learner.updates, 2);
    // Written again, it is format 2 and reads back the same.
    let again = Checkpoint::decode(&c.encode(&path).unwrap(), &path).unwrap();
    assert_eq!(again, c);
}

#[test]
fn only_the_fields_that_shape_the_model_must_match() {
    let c = sample();
    let p = Path::new("x");
    let (obs, act) = (Space::unbounded(4), Space::discrete(2));
    // Another worker count, budget, learning rate, timeout: accepted.
    let other = PpoConfig::default()
        .num_workers(7)
        .total_env_steps(5_000_000)
        .learning_rate(1e-4)
        .sample_timeout(std::time::Duration::from_secs(1));
    c.check_matches(p, "CartPole-v1", &obs, &act, &other)
        .unwrap();
    let err = c
        .check_matches(
            p,
            "CartPole-v1",
            &obs,
            &act,
            &PpoConfig::default().hidden(vec![32]),
        )
        .unwrap_err();
    assert!(
        matches!(&err, CheckpointError::ConfigMismatch { field, .. } if field == "hidden"),
        "{err}"
    );
    assert!(err.to_string().contains("hidden = [64, 64]"), "{err}");
    assert!(err.to_string().contains("must match"), "{err}");
    let err = c
        .check_matches(p, "Pendulum-v1", &obs, &act, &PpoConfig::default())
        .unwrap_err();
    assert!(
        matches!(&err, CheckpointError::ConfigMismatch { field, .. } if field == "env"),
        "{err}"
    );
    let err = c
        .check_matches(p, "CartPole-v1", &obs, &Space::discrete(3), &other)
        .unwrap_err();
    assert!(
        matches!(&err, CheckpointError::ConfigMismatch { field, .. } if field == "action_space"),
        "{err}"
    );
}

#[test]
fn writes_replace_the_file_whole_and_leave_no_temporary_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.ckpt");
    let mut c = sample();
    c.write(&path).unwrap();
    c.counters.iteration = 4;
    c.write(&path).unwrap();
    assert_eq!(Checkpoint::read(&path).unwrap().counters.iteration, 4);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("run.ckpt")]);
    assert_eq!(temporary(&path), dir.path().join("run.ckpt.tmp"));
    // A directory that does not exist: an I/O error naming the file.
    let missing = dir.path().join("no/such/dir/run.ckpt");
    let err = c.write(&missing).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::Io { path, .. } if path == &missing),
        "{err}"
    );
    // A bare file name syncs the current directory (its parent is "").
    assert!(sync_directory(Path::new("run.ckpt")).is_ok());
}
