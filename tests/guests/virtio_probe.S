/* Probes every virtio-mmio window husk-vmm announced: prints the kernel command line (with
 * its virtio_mmio.device= entries), then, from the first window on, each device's
 * MagicValue, Version, DeviceID and VendorID as read through real MMIO exits, until a
 * window nobody owns (reads as all ones). Then resets through the i8042. */
    .intel_syntax noprefix
    .text
    .globl _start
    .code64
_start:
    lea rsp, [rip + stack_top]
    mov r12, rsi
    call map_gap
    lea rbx, [rip + s_cmd]
    call puts
    mov ebx, dword ptr [r12 + 0x228]
    call puts
    lea rbx, [rip + s_bar]
    call puts
    mov r13d, 0xd0000000       /* first virtio-mmio window */
    xor r14d, r14d
next:
    mov r15d, dword ptr [r13 + 0x000]
    cmp r15d, 0x74726976
    jne done
    lea rbx, [rip + s_dev]
    call puts
    mov rax, r13
    mov ecx, 8
    call puthex
    lea rbx, [rip + s_magic]
    mov eax, r15d
    call putreg
    lea rbx, [rip + s_version]
    mov eax, dword ptr [r13 + 0x004]
    call putreg
    lea rbx, [rip + s_id]
    mov eax, dword ptr [r13 + 0x008]
    call putreg
    lea rbx, [rip + s_vendor]
    mov eax, dword ptr [r13 + 0x00c]
    call putreg
    lea rbx, [rip + s_nl]
    call puts
    add r13, 0x1000
    inc r14d
    cmp r14d, 19
    jb next
done:
    lea rbx, [rip + s_end]
    call puts
    mov rax, r14
    mov ecx, 2
    call puthex
    lea rbx, [rip + s_nl]
    call puts
    jmp reset

#include "common.inc"
#include "virtio.inc"

s_cmd:     .asciz "CMDLINE="
s_bar:     .asciz "|\n"
s_dev:     .asciz "VIRTIO@"
s_magic:   .asciz "MAGIC"
s_version: .asciz "VERSION"
s_id:      .asciz "DEVICE"
s_vendor:  .asciz "VENDOR"
s_nl:      .asciz "\n"
s_end:     .asciz "DEVICES="
    .balign 16
    .space 256
stack_top:
    .balign 4096
gap_pd:
    .space 4096
