use super::*;

#[test]
fn resources_parse_and_bad_ones_are_named() {
    assert_eq!(
        parse_resources("special=2, big = 0.5").unwrap(),
        vec![("special".to_owned(), 2.0), ("big".to_owned(), 0.5)]
    );
    assert!(parse_resources("").unwrap().is_empty());
    assert!(parse_resources("x").unwrap_err().contains("name=amount"));
    assert!(parse_resources("x=y").unwrap_err().contains("not a number"));
    assert!(parse_resources("x=-1").unwrap_err().contains("≥ 0"));
    assert!(parse_resources("x=inf").is_err());
}

#[test]
fn byte_counts_take_units_and_bad_ones_are_named() {
    assert_eq!(parse_bytes("1073741824"), Ok(1 << 30));
    assert_eq!(parse_bytes("2G"), Ok(2 << 30));
    assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
    assert_eq!(parse_bytes("64k"), Ok(64 << 10));
    assert!(parse_bytes("2T").unwrap_err().contains("unit"));
    assert!(parse_bytes("lots").is_err());
    assert!(parse_bytes("0").is_err());
    assert!(parse_bytes("99999999999999999999G").is_err());
}

fn start_args(args: &[&str]) -> StartArgs {
    let line = ["troupe", "start"].iter().chain(args);
    match Cli::try_parse_from(line).unwrap().command {
        Command::Start(args) => args,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_metrics_port_that_could_not_be_served_is_refused_before_starting() {
    let plain = start_args(&["--head"]);
    assert!(start::check_metrics(&plain).is_ok());
    let asked = start_args(&["--head", "--metrics-port", "0"]);
    let checked = start::check_metrics(&asked);
    assert_eq!(checked.is_ok(), cfg!(feature = "dashboard"), "{checked:?}");
    if let Err(err) = checked {
        assert!(err.to_string().contains("`dashboard` feature"), "{err}");
    }
    if cfg!(feature = "dashboard") {
        let open = start_args(&["--head", "--bind", "0.0.0.0", "--metrics-port", "9464"]);
        let err = start::check_metrics(&open).unwrap_err().to_string();
        assert!(err.contains("TROUPE_METRICS_TOKEN"), "{err}");
        let guarded = start_args(&[
            "--head",
            "--bind",
            "0.0.0.0",
            "--metrics-port",
            "9464",
            "--metrics-token",
            "a-token-of-16-or-more",
        ]);
        assert!(start::check_metrics(&guarded).is_ok());
    }
}

#[test]
fn start_needs_a_head_flag_or_an_address() {
    assert!(Cli::try_parse_from(["troupe", "start"]).is_err());
    assert!(Cli::try_parse_from(["troupe", "start", "--head", "--address", "x:1"]).is_err());
    let cli =
        Cli::try_parse_from(["troupe", "start", "--head", "--port", "7000", "--block"]).unwrap();
    match cli.command {
        Command::Start(args) => {
            assert!(args.head && args.block);
            assert_eq!(args.port, Some(7000));
        }
        other => panic!("{other:?}"),
    }
}
