/* Drives the first virtio-mmio device (a virtio-net NIC) like a minimal driver: reset,
 * ACKNOWLEDGE|DRIVER, VERSION_1 + MAC, FEATURES_OK, rx queue 0 and tx queue 1 with 8
 * descriptors each, DRIVER_OK; prints the MAC from config space. Then:
 *   1. posts one 2 KiB rx buffer (QueueNotify 0);
 *   2. sends one UDP datagram 10.77.0.2:4444 → 10.77.0.1:5555 carrying
 *      "HUSK-GUEST-NET-1" to the Ethernet broadcast address (QueueNotify 1, a KVM
 *      ioeventfd with datamatch 1) and polls its used entry;
 *   3. polls the rx used ring for whatever the host sends back and prints its used length
 *      and the 16 bytes after the vnet, Ethernet, IPv4 and UDP headers.
 * The used rings are polled (bounded: every instruction is emulated on PVM hosts). */
    .intel_syntax noprefix
    .text
    .globl _start
    .code64
_start:
    lea rsp, [rip + stack_top]
    call map_gap
    mov r13d, 0xd0000000               /* first virtio-mmio window */
    call net_init

    lea rbx, [rip + s_mac]
    call puts
    xor r15d, r15d
1:  movzx eax, byte ptr [r13 + 0x100 + r15]
    mov ecx, 2
    call puthex
    inc r15d
    cmp r15d, 6
    jb 1b
    lea rbx, [rip + s_nl]
    call puts

    /* rx: descriptor 0 = {rx_buf, 2048, WRITE}, published and notified. */
    lea rdi, [rip + rxq_desc]
    lea rax, [rip + rx_buf]
    mov ecx, 2048
    mov edx, 2
    xor r8d, r8d
    call set_desc
    lea rsi, [rip + rxq_avail]
    mov word ptr [rsi + 4], 0
    mov word ptr [rsi + 2], 1
    mov dword ptr [r13 + 0x050], 0

    /* tx: descriptor 0 = {tx_frame, header + frame}. */
    lea rdi, [rip + txq_desc]
    lea rax, [rip + tx_frame]
    mov ecx, tx_end - tx_frame
    xor edx, edx
    xor r8d, r8d
    call set_desc
    lea rsi, [rip + txq_avail]
    mov word ptr [rsi + 4], 0
    mov word ptr [rsi + 2], 1
    mov dword ptr [r13 + 0x050], 1
    lea rsi, [rip + txq_used]
    mov ecx, 0x400000
2:  movzx eax, word ptr [rsi + 2]
    cmp eax, 1
    je 3f
    pause
    dec ecx
    jnz 2b
    jmp timeout
3:  lea rbx, [rip + s_tx]
    call putreg
    lea rbx, [rip + s_nl]
    call puts

    lea rsi, [rip + rxq_used]
    mov ecx, 0x10000000
4:  movzx eax, word ptr [rsi + 2]
    cmp eax, 1
    je 5f
    pause
    dec ecx
    jnz 4b
    jmp timeout
5:  lea rbx, [rip + s_rxlen]
    mov eax, dword ptr [rsi + 8]       /* used elem 0: id at +4, len at +8 */
    call putreg
    lea rbx, [rip + s_rxdata]
    call puts
    lea r14, [rip + rx_buf + 12 + 14 + 20 + 8]
    xor r15d, r15d
6:  movzx eax, byte ptr [r14 + r15]
    mov ecx, 2
    call puthex
    inc r15d
    cmp r15d, 16
    jb 6b
    lea rbx, [rip + s_done]
    call puts
    jmp reset

timeout:
    lea rbx, [rip + s_timeout]
    call puts
    jmp reset

fail:
    lea rbx, [rip + s_fail]
    call puts
    jmp reset

/* net_init: brings the virtio-net device at r13 to DRIVER_OK with VERSION_1 + MAC and
 * queues 0 (rx) and 1 (tx); prints the device id and status; jumps to `fail` when the
 * device is not a NIC or refuses a step. Clobbers rax-rdx, r8-r10, r15. */
net_init:
    mov r15d, dword ptr [r13 + 0x008]  /* DeviceID */
    lea rbx, [rip + s_id]
    mov eax, r15d
    call putreg
    cmp r15d, 1
    jne fail
    mov dword ptr [r13 + 0x070], 0     /* reset */
    mov dword ptr [r13 + 0x070], 1     /* ACKNOWLEDGE */
    mov dword ptr [r13 + 0x070], 3     /* | DRIVER */
    mov dword ptr [r13 + 0x024], 1     /* DriverFeatures[32..63] = VERSION_1 */
    mov dword ptr [r13 + 0x020], 1
    mov dword ptr [r13 + 0x024], 0     /* DriverFeatures[0..31] = MAC (bit 5) */
    mov dword ptr [r13 + 0x020], 0x20
    mov dword ptr [r13 + 0x070], 11    /* | FEATURES_OK */
    mov r15d, dword ptr [r13 + 0x070]
    test r15d, 8
    jz fail

    mov dword ptr [r13 + 0x030], 0     /* QueueSel 0: rx */
    mov dword ptr [r13 + 0x038], 8
    lea rax, [rip + rxq_desc]
    mov dword ptr [r13 + 0x080], eax
    mov dword ptr [r13 + 0x084], 0
    lea rax, [rip + rxq_avail]
    mov dword ptr [r13 + 0x090], eax
    mov dword ptr [r13 + 0x094], 0
    lea rax, [rip + rxq_used]
    mov dword ptr [r13 + 0x0a0], eax
    mov dword ptr [r13 + 0x0a4], 0
    mov dword ptr [r13 + 0x044], 1
    mov dword ptr [r13 + 0x030], 1     /* QueueSel 1: tx */
    mov dword ptr [r13 + 0x038], 8
    lea rax, [rip + txq_desc]
    mov dword ptr [r13 + 0x080], eax
    mov dword ptr [r13 + 0x084], 0
    lea rax, [rip + txq_avail]
    mov dword ptr [r13 + 0x090], eax
    mov dword ptr [r13 + 0x094], 0
    lea rax, [rip + txq_used]
    mov dword ptr [r13 + 0x0a0], eax
    mov dword ptr [r13 + 0x0a4], 0
    mov dword ptr [r13 + 0x044], 1
    mov dword ptr [r13 + 0x070], 15    /* | DRIVER_OK */
    mov r15d, dword ptr [r13 + 0x070]
    lea rbx, [rip + s_status]
    mov eax, r15d
    call putreg
    cmp r15d, 15
    jne fail
    ret

/* set_desc: descriptor at rdi = {addr rax, len ecx, flags dx, next r8w}; rdi += 16. */
set_desc:
    mov qword ptr [rdi], rax
    mov dword ptr [rdi + 8], ecx
    mov word ptr [rdi + 12], dx
    mov word ptr [rdi + 14], r8w
    add rdi, 16
    ret

#include "common.inc"
#include "virtio.inc"

s_id:      .asciz "DEVICE"
s_status:  .asciz "STATUS"
s_mac:     .asciz " MAC="
s_tx:      .asciz "TX_USED"
s_rxlen:   .asciz "RX_LEN"
s_rxdata:  .asciz " RX_DATA="
s_nl:      .asciz "\n"
s_done:    .asciz "\nDONE\n"
s_fail:    .asciz "\nFAIL\n"
s_timeout: .asciz "\nTIMEOUT\n"

    .balign 16
tx_frame:
    .space 12                          /* virtio_net_hdr_v1: no offload */
    .byte 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
    .byte 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a
    .byte 0x08, 0x00
    .byte 0x45, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x26, 0x25
    .byte 10, 77, 0, 2, 10, 77, 0, 1
    .byte 0x11, 0x5c, 0x15, 0xb3, 0x00, 0x18, 0x00, 0x00
    .ascii "HUSK-GUEST-NET-1"
tx_end:

    .balign 16
    .space 1024
stack_top:
    .balign 4096
gap_pd:    .space 4096
    .balign 4096
rxq_desc:  .space 16 * 8
rxq_avail: .space 4 + 2 * 8 + 2
    .balign 4
rxq_used:  .space 4 + 8 * 8 + 2
    .balign 4096
txq_desc:  .space 16 * 8
txq_avail: .space 4 + 2 * 8 + 2
    .balign 4
txq_used:  .space 4 + 8 * 8 + 2
    .balign 16
rx_buf:    .space 2048
