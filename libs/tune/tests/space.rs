//! Search spaces: reproducible from a seed, within bounds, and a grid
//! covers its product.

use std::collections::BTreeSet;

use troupe_tune::{SearchSpace, TuneError, Value};

fn space() -> SearchSpace {
    SearchSpace::new()
        .uniform("u", -1.0, 3.0)
        .log_uniform("lr", 1e-5, 1e-1)
        .randint("n", 2, 9)
        .choice("act", ["relu", "tanh", "gelu"])
}

#[test]
fn a_seed_gives_the_same_configs_and_another_seed_others() {
    let a = space().generate(50, 42).unwrap();
    assert_eq!(a, space().generate(50, 42).unwrap());
    let b = space().generate(50, 43).unwrap();
    assert_ne!(a, b);
    assert_eq!(a.len(), 50);
}

#[test]
fn samples_stay_within_their_bounds_and_cover_them() {
    let configs = space().generate(2_000, 7).unwrap();
    let (mut lo_u, mut hi_u) = (f64::MAX, f64::MIN);
    let mut ints = BTreeSet::new();
    let mut acts = BTreeSet::new();
    let mut small_lr = 0;
    for c in &configs {
        let u = c.f64("u").unwrap();
        assert!((-1.0..3.0).contains(&u), "u = {u}");
        lo_u = lo_u.min(u);
        hi_u = hi_u.max(u);
        let lr = c.f64("lr").unwrap();
        assert!((1e-5..1e-1).contains(&lr), "lr = {lr}");
        if lr < 1e-3 {
            small_lr += 1;
        }
        let n = c.i64("n").unwrap();
        assert!((2..9).contains(&n), "n = {n}");
        ints.insert(n);
        acts.insert(c.str("act").unwrap().to_owned());
    }
    assert!(lo_u < -0.9 && hi_u > 2.9, "u spans [{lo_u}, {hi_u}]");
    assert_eq!(ints, (2..9).collect::<BTreeSet<_>>());
    assert_eq!(acts.len(), 3);
    // Log-uniform: half the draws below the geometric middle (1e-3).
    assert!(
        (800..1200).contains(&small_lr),
        "{small_lr} of 2000 below 1e-3"
    );
}

#[test]
fn a_grid_covers_the_product_in_each_sample() {
    let space = SearchSpace::new()
        .grid("a", [1, 2, 3])
        .grid("b", ["x", "y"])
        .uniform("u", 0.0, 1.0);
    assert_eq!(space.grid_size(), 6);
    let configs = space.generate(2, 1).unwrap();
    assert_eq!(configs.len(), 12);
    for sample in configs.chunks(6) {
        let points: BTreeSet<(i64, String)> = sample
            .iter()
            .map(|c| (c.i64("a").unwrap(), c.str("b").unwrap().to_owned()))
            .collect();
        assert_eq!(points.len(), 6, "every point of the grid once per sample");
    }
    // The last grid dimension varies fastest, as Ray's.
    assert_eq!(configs[0].get("b"), Some(&Value::from("x")));
    assert_eq!(configs[1].get("b"), Some(&Value::from("y")));
    assert_eq!(configs[1].get("a"), Some(&Value::Int(1)));
}

#[test]
fn bad_dimensions_are_refused_with_their_name() {
    for (space, name) in [
        (SearchSpace::new().uniform("u", 1.0, 1.0), "u"),
        (SearchSpace::new().log_uniform("lr", 0.0, 1.0), "lr"),
        (SearchSpace::new().randint("n", 3, 3), "n"),
        (SearchSpace::new().choice::<i64>("c", []), "c"),
    ] {
        match space.generate(1, 0) {
            Err(TuneError::Invalid { what, .. }) => assert!(what.contains(name), "{what}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(matches!(
        SearchSpace::new().generate(0, 0),
        Err(TuneError::Invalid { .. })
    ));
}
