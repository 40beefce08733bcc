//! NetworkManager-tsp's programs: `tspc` (gogoc's command line), `tsp-broker`, `nm-tsp-service`
//! and `nm-tsp-auth-dialog`, in `src/bin/`. Their common part is [`logging`] (gogoc's log
//! destinations, syslog, the rotating file). The layers they are made of are the workspace's
//! crates: `tsp-proto`, `tsp-config`, `tsp-tunnel`, `tsp-client`, `tsp-broker` and `tsp-nm`
//! (docs/ARCHITECTURE.md).

pub mod logging;
pub mod privileges;
pub mod systemd;
