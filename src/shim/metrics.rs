//! The guest's cgroup numbers for a container (the agent's `Stats`) as containerd's cgroup
//! v1 `Metrics`, which containerd's CRI plugin turns into `crictl stats` numbers.

use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use husk_protocol::StatsReply;

/// The type URL containerd decodes a task's metrics by.
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

/// `stats` as cgroup v1 metrics, packed for a `StatsResponse`.
pub fn to_any(stats: &StatsReply) -> Result<Any, containerd_shim::protos::protobuf::Error> {
    let mut m = Metrics::new();
    m.cpu = MessageField::some(CPUStat {
        usage: MessageField::some(CPUUsage {
            total: stats.cpu_usage_ns,
            user: stats.cpu_user_ns,
            kernel: stats.cpu_system_ns,
            ..Default::default()
        }),
        ..Default::default()
    });
    m.memory = MessageField::some(MemoryStat {
        usage: MessageField::some(MemoryEntry {
            usage: stats.memory_usage_bytes,
            // cgroup v1's "no limit" is the largest page-aligned value; containerd shows
            // what it gets.
            limit: stats.memory_limit_bytes.unwrap_or(u64::MAX),
            ..Default::default()
        }),
        ..Default::default()
    });
    m.memory_oom_control = MessageField::some(MemoryOomControl {
        oom_kill: stats.oom_kills,
        ..Default::default()
    });
    m.pids = MessageField::some(PidsStat {
        current: stats.pids,
        ..Default::default()
    });
    Ok(Any {
        type_url: METRICS_TYPE_URL.into(),
        value: m.write_to_bytes()?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_numbers_arrive_in_the_metrics() {
        let any = to_any(&StatsReply {
            cpu_usage_ns: 1_000,
            cpu_user_ns: 600,
            cpu_system_ns: 400,
            memory_usage_bytes: 4 << 20,
            memory_limit_bytes: Some(64 << 20),
            pids: 3,
            oom_kills: 2,
        })
        .unwrap();
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage.total, 1_000);
        assert_eq!(m.cpu.usage.kernel, 400);
        assert_eq!(m.memory.usage.usage, 4 << 20);
        assert_eq!(m.memory.usage.limit, 64 << 20);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.memory_oom_control.oom_kill, 2);
    }
}
