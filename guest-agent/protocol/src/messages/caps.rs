//! Linux capabilities by name, with their kernel numbers.
//!
//! An enum rather than strings so an unknown name fails at decode time (the host drops names
//! this kernel does not know, as runc does, before sending) and the agent gets the number for
//! `capset`/`prctl` without a lookup table of its own.

use serde::{Deserialize, Serialize};

macro_rules! capabilities {
    ($($variant:ident = $num:literal => $name:literal,)*) => {
        /// One capability; the discriminant is the kernel's `CAP_*` number.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[repr(u8)]
        pub enum Capability {
            $(#[serde(rename = $name)] $variant = $num,)*
        }

        impl Capability {
            /// Every capability, in kernel order.
            pub const ALL: &'static [Capability] = &[$(Capability::$variant,)*];

            /// The kernel's `CAP_*` number.
            pub fn number(self) -> u8 {
                self as u8
            }

            /// The OCI spelling, e.g. `CAP_SYS_ADMIN`.
            pub fn name(self) -> &'static str {
                match self { $(Capability::$variant => $name,)* }
            }
        }
    };
}

capabilities! {
    Chown = 0 => "CAP_CHOWN",
    DacOverride = 1 => "CAP_DAC_OVERRIDE",
    DacReadSearch = 2 => "CAP_DAC_READ_SEARCH",
    Fowner = 3 => "CAP_FOWNER",
    Fsetid = 4 => "CAP_FSETID",
    Kill = 5 => "CAP_KILL",
    Setgid = 6 => "CAP_SETGID",
    Setuid = 7 => "CAP_SETUID",
    Setpcap = 8 => "CAP_SETPCAP",
    LinuxImmutable = 9 => "CAP_LINUX_IMMUTABLE",
    NetBindService = 10 => "CAP_NET_BIND_SERVICE",
    NetBroadcast = 11 => "CAP_NET_BROADCAST",
    NetAdmin = 12 => "CAP_NET_ADMIN",
    NetRaw = 13 => "CAP_NET_RAW",
    IpcLock = 14 => "CAP_IPC_LOCK",
    IpcOwner = 15 => "CAP_IPC_OWNER",
    SysModule = 16 => "CAP_SYS_MODULE",
    SysRawio = 17 => "CAP_SYS_RAWIO",
    SysChroot = 18 => "CAP_SYS_CHROOT",
    SysPtrace = 19 => "CAP_SYS_PTRACE",
    SysPacct = 20 => "CAP_SYS_PACCT",
    SysAdmin = 21 => "CAP_SYS_ADMIN",
    SysBoot = 22 => "CAP_SYS_BOOT",
    SysNice = 23 => "CAP_SYS_NICE",
    SysResource = 24 => "CAP_SYS_RESOURCE",
    SysTime = 25 => "CAP_SYS_TIME",
    SysTtyConfig = 26 => "CAP_SYS_TTY_CONFIG",
    Mknod = 27 => "CAP_MKNOD",
    Lease = 28 => "CAP_LEASE",
    AuditWrite = 29 => "CAP_AUDIT_WRITE",
    AuditControl = 30 => "CAP_AUDIT_CONTROL",
    Setfcap = 31 => "CAP_SETFCAP",
    MacOverride = 32 => "CAP_MAC_OVERRIDE",
    MacAdmin = 33 => "CAP_MAC_ADMIN",
    Syslog = 34 => "CAP_SYSLOG",
    WakeAlarm = 35 => "CAP_WAKE_ALARM",
    BlockSuspend = 36 => "CAP_BLOCK_SUSPEND",
    AuditRead = 37 => "CAP_AUDIT_READ",
    Perfmon = 38 => "CAP_PERFMON",
    Bpf = 39 => "CAP_BPF",
    CheckpointRestore = 40 => "CAP_CHECKPOINT_RESTORE",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_kernel_order_and_names_round_trip() {
        for (i, cap) in Capability::ALL.iter().enumerate() {
            assert_eq!(cap.number() as usize, i);
            let json = serde_json::to_string(cap).expect("encode");
            assert_eq!(json, format!("\"{}\"", cap.name()));
            let back: Capability = serde_json::from_str(&json).expect("decode");
            assert_eq!(back, *cap);
        }
        assert_eq!(Capability::SysAdmin.number(), 21);
        assert!(serde_json::from_str::<Capability>("\"CAP_NOPE\"").is_err());
    }
}
