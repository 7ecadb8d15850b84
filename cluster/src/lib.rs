//! Troupe's cluster layer: nodes joining through `ractor_cluster`, heartbeats,
//! failure detection, a chunked data path for large objects.
//!
//! Not implemented yet. It will plug into `troupe-core` through traits core
//! defines; core never opens a socket.
