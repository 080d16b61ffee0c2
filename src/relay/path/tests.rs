//! The relay's request path, step by step.

use super::*;

#[test]
fn splits_cluster_and_keeps_query() {
    let (cluster, uri) = split_cluster_uri(&"/clusters/dev/api/v1/pods?watch=1".parse().unwrap()).unwrap();
    assert_eq!(cluster, "dev");
    assert_eq!(uri, "/api/v1/pods?watch=1");
    let (_, root) = split_cluster_uri(&"/clusters/dev".parse().unwrap()).unwrap();
    assert_eq!(root, "/");
    assert!(split_cluster_uri(&"/clusters/Bad_Name/api".parse().unwrap()).is_err());
    assert!(split_cluster_uri(&"/clusters//api".parse().unwrap()).is_err());
}

#[test]
fn request_ids_carry_a_per_process_random_part_and_a_counter() {
    let (a, b) = (next_request_id("relay-0"), next_request_id("relay-0"));
    let parts = |id: &str| id.rsplitn(3, '-').map(str::to_owned).collect::<Vec<_>>();
    let (pa, pb) = (parts(&a), parts(&b));
    assert_ne!(a, b);
    assert_eq!(pa[1], pb[1], "one random part per process");
    assert_eq!(pa[1].len(), 16);
    assert_eq!(pa[2], "relay-0");
    assert!(pb[0].parse::<u64>().unwrap() > pa[0].parse::<u64>().unwrap());
}

mod whole;
