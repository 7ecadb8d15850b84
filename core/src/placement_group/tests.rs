use super::*;

fn room(node: u64, cpus: f64) -> NodeRoom {
    NodeRoom {
        node: NodeId(node),
        free: Resources::cpus(cpus),
    }
}

fn cpus(n: usize, each: f64) -> Vec<Resources> {
    vec![Resources::cpus(each); n]
}

fn distinct(nodes: &[NodeId]) -> usize {
    let mut seen = nodes.to_vec();
    seen.sort();
    seen.dedup();
    seen.len()
}

#[test]
fn pack_puts_everything_on_one_node_when_it_fits_else_fills_nodes_in_turn() {
    let nodes = [room(1, 2.0), room(2, 4.0), room(3, 1.0)];
    let plan4 = plan(&cpus(4, 1.0), PlacementStrategy::Pack, &nodes).unwrap();
    assert_eq!(plan4, vec![NodeId(2); 4]);
    // 6 CPUs: the 4-CPU node first, then the next with room.
    let plan6 = plan(&cpus(6, 1.0), PlacementStrategy::Pack, &nodes).unwrap();
    assert_eq!(distinct(&plan6), 2);
    assert_eq!(plan6.iter().filter(|n| **n == NodeId(2)).count(), 4);
    assert!(plan(&cpus(8, 1.0), PlacementStrategy::Pack, &nodes).is_err());
}

#[test]
fn strict_pack_needs_one_node_with_room_for_all() {
    let nodes = [room(1, 2.0), room(2, 2.0)];
    assert_eq!(
        plan(&cpus(2, 1.0), PlacementStrategy::StrictPack, &nodes).unwrap(),
        vec![NodeId(1); 2]
    );
    let err = plan(&cpus(3, 1.0), PlacementStrategy::StrictPack, &nodes).unwrap_err();
    assert!(err.contains("STRICT_PACK"), "{err}");
}

#[test]
fn spread_uses_every_node_before_doubling_up() {
    let nodes = [room(1, 4.0), room(2, 4.0), room(3, 4.0)];
    let three = plan(&cpus(3, 1.0), PlacementStrategy::Spread, &nodes).unwrap();
    assert_eq!(distinct(&three), 3);
    let five = plan(&cpus(5, 1.0), PlacementStrategy::Spread, &nodes).unwrap();
    assert_eq!(distinct(&five), 3);
    // Spread is best effort: one node with room takes them all.
    let one = [room(1, 4.0), room(2, 0.0)];
    assert_eq!(
        plan(&cpus(2, 1.0), PlacementStrategy::Spread, &one).unwrap(),
        vec![NodeId(1); 2]
    );
}

#[test]
fn strict_spread_needs_a_distinct_node_per_bundle() {
    let nodes = [room(1, 4.0), room(2, 4.0)];
    let two = plan(&cpus(2, 1.0), PlacementStrategy::StrictSpread, &nodes).unwrap();
    assert_eq!(distinct(&two), 2);
    let err = plan(&cpus(3, 1.0), PlacementStrategy::StrictSpread, &nodes).unwrap_err();
    assert!(err.contains("STRICT_SPREAD"), "{err}");
    // A node without room does not count.
    let full = [room(1, 4.0), room(2, 0.5)];
    assert!(plan(&cpus(2, 1.0), PlacementStrategy::StrictSpread, &full).is_err());
}

#[test]
fn custom_resources_and_memory_must_fit_too() {
    let mut special = room(7, 1.0);
    special.free = special.free.with("tpu", 2.0).with_memory(1 << 30);
    let nodes = [room(1, 8.0), special];
    let bundle = Resources::cpus(1.0).with("tpu", 1.0).with_memory(1 << 29);
    assert_eq!(
        plan(
            std::slice::from_ref(&bundle),
            PlacementStrategy::Pack,
            &nodes
        )
        .unwrap(),
        vec![NodeId(7)]
    );
    // Two fit its memory and TPUs but not its single CPU.
    assert!(plan(
        &[bundle.clone(), bundle],
        PlacementStrategy::StrictPack,
        &nodes
    )
    .is_err());
    assert!(plan(&cpus(1, 1.0), PlacementStrategy::Pack, &[]).is_err());
}

#[test]
fn bundles_are_validated_and_renamed_for_their_group() {
    assert_eq!(
        PlacementGroupOptions::new(vec![]).validate(),
        Err(PlacementGroupError::NoBundles)
    );
    let zero = PlacementGroupOptions::new(vec![Resources::default()]).validate();
    assert!(matches!(
        zero,
        Err(PlacementGroupError::InvalidBundle { index: 0, .. })
    ));
    let gpus = PlacementGroupOptions::new(vec![Resources::cpus(1.0).with_gpus(1.0)]).validate();
    assert!(matches!(
        gpus,
        Err(PlacementGroupError::InvalidBundle { .. })
    ));
    let negative = PlacementGroupOptions::new(vec![Resources::cpus(1.0), Resources::cpus(-1.0)]);
    assert!(matches!(
        negative.validate(),
        Err(PlacementGroupError::InvalidBundle { index: 1, .. })
    ));
    let group = PlacementGroupId {
        node: NodeId(3),
        seq: 9,
    };
    let renamed = in_bundle(&Resources::cpus(0.5).with("tpu", 1.0), group, 2);
    assert_eq!(renamed.num_cpus, 0.0);
    assert_eq!(renamed.custom[&format!("pg/{group}/2/cpu")], 0.5);
    assert_eq!(renamed.custom[&format!("pg/{group}/2/custom/tpu")], 1.0);
}
