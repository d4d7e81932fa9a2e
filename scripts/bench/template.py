"""What a booted-VM template would save on QEMU: a cold boot of husk's kernel + agent against a
restore of the same VM from a snapshot taken once the agent served, each timed from QEMU's
spawn to the agent's answer to `Hello` through husk-agent-mux, interleaved round by round.

The template is the cold VM itself, stopped after its first `Hello`: its RAM lives in a file
(`memory-backend-file,share=on`), its device state is saved with `x-ignore-shared` (a few
KiB), and each clone maps the RAM file privately (`share=off`: copy-on-write, so clones
share every page they do not write) and loads only the device state (Kata's VM templating
works the same way). With RAM "stream" instead of "shared", the template's RAM is anonymous
memory saved into the state itself (zero pages left out) and each clone loads it into
anonymous memory of its own: nothing is shared between clones, but no clone needs write
access to a file every other clone maps (QEMU 7.2 opens a `mem-path` read-write even for
`share=off`, so a VM that took over its QEMU could rewrite the template under every later
clone; 8.2 falls back to a read-only open). The agent's channel is the virtio-serial port husk gives QEMU; a clone's
new husk-agent-mux says Hello on the link and the guest drops the template's streams.

With LAYER_DISK_BINARY and LAYER files, every VM (the template, each cold boot and each
clone) also gets the layer disk as `husk run` gives it on QEMU: its own husk-layer-disk daemon
serving the layers as one composite disk, a read-only NBD export behind QEMU's virtio-blk
device (the template's disk and each clone's are different connections, the clone's to a
daemon of its own). No network, no scratch disk. What this leaves out, and what husk's QEMU
backend would need before it restores containers' VMs, is in the README.

Usage: template.py [--ram shared|stream] ROUNDS KERNEL INITRAMFS MUX_BINARY WORKDIR
                   [LAYER_DISK_BINARY LAYER...]"""
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import boot  # noqa: E402

AGENT_PORT = 1024  # AGENT_VSOCK_PORT
PROTOCOL_VERSION = 3  # husk_protocol::PROTOCOL_VERSION
LIMIT = 120.0


def qemu_args(work, name, kernel, initramfs, memory, link):
    log = os.path.join(work, f"{name}-console.log")
    return ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-M", "microvm,acpi=off,x-option-roms=off,memory-backend=mem",
            "-accel", boot.qemu_accel_arg("tcg"), "-smp", "1", "-m", "256M",
            "-object", memory,
            "-chardev", f"file,id=console,path={log}", "-serial", "chardev:console",
            "-kernel", kernel, "-initrd", initramfs, "-append", boot.husk_append("tcg"),
            # src/backend/agent_mux.rs: qemu_args
            "-device", "virtio-serial-device,max_ports=2",
            "-chardev", f"socket,id=agent,path={link}",
            "-device", "virtserialport,chardev=agent,name=husk.agent,nr=1",
            "-qmp", f"unix:{os.path.join(work, name + '.qmp')},server=on,wait=off"]


def layer_disk_args(sock):
    """src/backend/qemu.rs: the layer disk, QEMU's virtio-blk over husk-layer-disk's export."""
    return ["-blockdev", f"driver=nbd,node-name=layers,server.type=unix,server.path={sock},"
            "read-only=on", "-device", "virtio-blk-device,drive=layers,serial=husk-layers"]


class Vm:
    """husk-agent-mux, husk-layer-disk when `layer_disk` is (binary, [layer]), and QEMU for
    one VM named `name` under `work`."""

    def __init__(self, work, name, mux_bin, args_for, layer_disk=None):
        self.work, self.name = work, name
        self.uds = os.path.join(work, f"{name}.vsock")
        link = self.uds + ".serial"
        blk = self.uds + ".blk"
        for p in (self.uds, link, blk, os.path.join(work, name + ".qmp")):
            if os.path.exists(p):
                os.remove(p)
        self.helpers = [subprocess.Popen([mux_bin, "--listen", self.uds, "--link", link],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        wait_for = [self.uds, link]
        extra = []
        if layer_disk:
            binary, layers = layer_disk
            cmd = [binary, "--socket", blk]
            for layer in layers:
                cmd += ["--layer", layer]
            self.helpers.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL))
            wait_for.append(blk)
            extra = layer_disk_args(blk)
        deadline = time.monotonic() + LIMIT
        while not all(os.path.exists(p) for p in wait_for):
            if time.monotonic() > deadline or any(h.poll() is not None for h in self.helpers):
                self.end()
                raise RuntimeError(f"{self.name}: a helper never listened")
            time.sleep(0.001)
        args = args_for(link)
        # Devices in the same order for the template and every clone (migration needs it).
        incoming = args.index("-incoming") if "-incoming" in args else len(args)
        self.qemu = subprocess.Popen(args[:incoming] + extra + args[incoming:],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def qmp(self):
        path = os.path.join(self.work, self.name + ".qmp")
        deadline = time.monotonic() + LIMIT
        while True:
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline or self.qemu.poll() is not None:
                    raise RuntimeError(f"{self.name}: no QMP socket")
                time.sleep(0.001)
        f = s.makefile("rw")
        f.readline()
        qmp_cmd(f, "qmp_capabilities")
        return f

    def hello(self):
        """Connects through the mux (retrying while the guest comes up) and exchanges Hello."""
        deadline = time.monotonic() + LIMIT
        while True:
            try:
                return hello_once(self.uds)
            except OSError:
                if time.monotonic() > deadline or self.qemu.poll() is not None:
                    raise RuntimeError(f"{self.name}: the agent never answered")
                time.sleep(0.002)

    def hello_or_end(self):
        """[`hello`], ending the VM (no orphan QEMU) when it fails."""
        try:
            return self.hello()
        except Exception:
            self.end()
            raise

    def pss_kib(self):
        with open(f"/proc/{self.qemu.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
        return 0

    def end(self):
        for p in [getattr(self, "qemu", None)] + self.helpers:
            if p is not None:
                p.kill()
                p.wait()


def qmp_cmd(f, name, **args):
    f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
    f.flush()
    while True:
        r = json.loads(f.readline())
        if "event" in r:
            continue
        if "error" in r:
            raise RuntimeError(f"QMP {name}: {r['error']}")
        return r.get("return")


def hello_once(uds):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    try:
        s.connect(uds)
        s.sendall(f"CONNECT {AGENT_PORT}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            b = s.recv(1)
            if not b:
                raise ConnectionError("closed before OK")
            line += b
        if not line.startswith(b"OK "):
            raise ConnectionError(line)
        body = json.dumps({"id": 1, "body": {"hello": {"version": PROTOCOL_VERSION,
                                                       "client": "template.py"}}}).encode()
        s.sendall(struct.pack(">I", len(body)) + body)
        head = recv_exact(s, 4)
        reply = json.loads(recv_exact(s, struct.unpack(">I", head)[0]))
        if "Ok" not in reply.get("body", {}):
            raise RuntimeError(f"Hello answered {reply}")
        return reply
    finally:
        s.close()


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise ConnectionError("closed mid-frame")
        b += c
    return b


def measure(rounds, kernel, initramfs, mux_bin, work, layer_disk=None, ram_mode="shared"):
    """Makes the template, then times `rounds` cold boots and restores, interleaved, each VM
    with its own layer disk when `layer_disk` is (husk-layer-disk, [layer]); the template's RAM
    a file clones map (`ram_mode` "shared") or part of the saved state ("stream"). Returns
    (what making the template took and left, {"cold": [s], "warm": [s], "cold_pss": [MiB],
    "warm_pss": [MiB]})."""
    os.makedirs(work, exist_ok=True)
    ram = os.path.join(work, "template.ram")
    state = os.path.join(work, "template.state")

    if ram_mode not in ("shared", "stream"):
        raise ValueError(f"RAM mode {ram_mode!r}: shared or stream")
    shared = ram_mode == "shared"
    # The template: a cold boot, stopped and saved after its Hello.
    with open(ram, "wb") as f:
        f.truncate(256 << 20 if shared else 0)
    t = time.monotonic()
    tpl_mem = (f"memory-backend-file,id=mem,size=256M,share=on,mem-path={ram}" if shared
               else "memory-backend-ram,id=mem,size=256M")
    tpl = Vm(work, "template", mux_bin, lambda link: qemu_args(
        work, "template", kernel, initramfs, tpl_mem, link), layer_disk)
    tpl.hello_or_end()
    q = tpl.qmp()
    qmp_cmd(q, "stop")
    if shared:
        qmp_cmd(q, "migrate-set-capabilities",
                capabilities=[{"capability": "x-ignore-shared", "state": True}])
    qmp_cmd(q, "migrate", uri=f"exec:cat > {state}")
    while qmp_cmd(q, "query-migrate").get("status") not in ("completed", "failed"):
        time.sleep(0.005)
    status = qmp_cmd(q, "query-migrate").get("status")
    tpl.end()
    if status != "completed":
        raise RuntimeError(f"saving the template failed: {status}")
    made = (f"template ({ram_mode} RAM) booted, answered and saved in "
            f"{time.monotonic() - t:.2f} s; state {os.path.getsize(state) / 1024:.0f} KiB"
            + (f", RAM file {os.stat(ram).st_blocks * 512 / 2**20:.1f} MiB on disk" if shared
               else ""))

    res = {"cold": [], "warm": [], "cold_pss": [], "warm_pss": []}
    for r in range(rounds):
        for kind in (("cold", "warm") if r % 2 == 0 else ("warm", "cold")):
            t = time.monotonic()
            if kind == "cold":
                vm = Vm(work, "cold", mux_bin, lambda link: qemu_args(
                    work, "cold", kernel, initramfs,
                    "memory-backend-memfd,id=mem,size=256M,share=on", link), layer_disk)
            else:
                clone_mem = (
                    f"memory-backend-file,id=mem,size=256M,share=off,mem-path={ram}" if shared
                    # Anonymous: a zero page the stream leaves out is never touched.
                    else "memory-backend-ram,id=mem,size=256M")
                vm = Vm(work, "warm", mux_bin, lambda link: qemu_args(
                    work, "warm", kernel, initramfs, clone_mem,
                    link) + ["-incoming", "defer"], layer_disk)
                try:
                    restore(vm, state, t, shared)
                except Exception:
                    vm.end()
                    raise
            vm.hello_or_end()
            res[kind].append(time.monotonic() - t)
            time.sleep(0.3)
            res[kind + "_pss"].append(vm.pss_kib() / 1024)
            vm.end()
    return made, res


def restore(vm, state, t, shared):
    """Loads the template's saved state into `vm` (started with `-incoming defer`) and runs it."""
    q = vm.qmp()
    if shared:
        qmp_cmd(q, "migrate-set-capabilities",
                capabilities=[{"capability": "x-ignore-shared", "state": True}])
    qmp_cmd(q, "migrate-incoming", uri=f"exec:cat < {state}")
    while qmp_cmd(q, "query-migrate").get("status") != "completed":
        if time.monotonic() - t > LIMIT:
            raise RuntimeError("restore did not complete")
        time.sleep(0.001)
    qmp_cmd(q, "cont")


def main():
    argv = sys.argv[1:]
    ram_mode = "shared"
    if argv[:1] == ["--ram"]:
        ram_mode, argv = argv[1], argv[2:]
    rounds, kernel, initramfs, mux_bin, work = (int(argv[0]), *argv[1:5])
    layer_disk = (argv[5], argv[6:]) if len(argv) > 6 else None
    made, res = measure(rounds, kernel, initramfs, mux_bin, work, layer_disk, ram_mode)
    cold, warm = res["cold"], res["warm"]
    med = statistics.median
    print(made)
    print(f"cold boot to the agent's Hello      median {med(cold) * 1e3:7.1f} ms  "
          f"(min {min(cold) * 1e3:.1f}, max {max(cold) * 1e3:.1f}; n={len(cold)})")
    print(f"template restore to the agent's Hello median {med(warm) * 1e3:7.1f} ms  "
          f"(min {min(warm) * 1e3:.1f}, max {max(warm) * 1e3:.1f}; n={len(warm)})  "
          f"restore / cold = {med(warm) / med(cold):.3f}")
    print(f"QEMU PSS 0.3 s after the Hello: cold {med(res['cold_pss']):.1f} MiB, restored "
          f"{med(res['warm_pss']):.1f} MiB (one VM at a time"
          + ("; a restored VM's unwritten pages are the template file's page cache, shared by "
             "every clone)" if ram_mode == "shared" else "; all of a clone's pages its own)"))


if __name__ == "__main__":
    main()
