/* Drives the first virtio-mmio device (a virtio-blk disk) like a minimal driver: reset,
 * ACKNOWLEDGE|DRIVER, VERSION_1 only, FEATURES_OK, queue 0 with 8 descriptors in this
 * image's memory, DRIVER_OK. Then two requests, each announced by a 4-byte QueueNotify
 * write of 0 (KVM signals the queue's ioeventfd; no exit to husk-vmm):
 *   1. IN  sector 0 → prints the used entry, the status byte and the first 16 bytes read;
 *   2. OUT sector 1 with "HUSK-GUEST-WROTE" + zeros → prints its status byte
 *      (0 on a writable disk, 1 = IOERR on a read-only one).
 * Set-up and queue memory: virtio.inc. The used ring is polled (bounded: every instruction is emulated on PVM hosts); the
 * InterruptStatus register is printed after each request and acknowledged. */
    .intel_syntax noprefix
    .text
    .globl _start
    .code64
_start:
    lea rsp, [rip + stack_top]
    call map_gap
    mov r13d, 0xd0000000               /* first virtio-mmio window */

    call blk_init
    lea rbx, [rip + s_nl]
    call puts

    /* Request 1: IN sector 0 — descriptors 0 (header) → 1 (data, W) → 2 (status, W). */
    lea rdi, [rip + vq_desc]
    lea rax, [rip + hdr_in]
    mov ecx, 16
    mov edx, 1                         /* NEXT */
    mov r8d, 1
    call set_desc
    lea rax, [rip + buf_in]
    mov ecx, 512
    mov edx, 3                         /* NEXT | WRITE */
    mov r8d, 2
    call set_desc
    lea rax, [rip + st_in]
    mov ecx, 1
    mov edx, 2                         /* WRITE */
    xor r8d, r8d
    call set_desc
    xor eax, eax                       /* head 0 */
    call submit

    lea rbx, [rip + s_st]
    movzx eax, byte ptr [rip + st_in]
    call putreg
    lea rbx, [rip + s_data]
    call puts
    lea r14, [rip + buf_in]
    xor r15d, r15d
1:  movzx eax, byte ptr [r14 + r15]
    mov ecx, 2
    call puthex
    inc r15d
    cmp r15d, 16
    jb 1b
    lea rbx, [rip + s_nl]
    call puts

    /* Request 2: OUT sector 1 — descriptors 3 (header) → 4 (data, R) → 5 (status, W). */
    lea rdi, [rip + vq_desc + 3 * 16]
    lea rax, [rip + hdr_out]
    mov ecx, 16
    mov edx, 1
    mov r8d, 4
    call set_desc
    lea rax, [rip + buf_out]
    mov ecx, 512
    mov edx, 1                         /* NEXT (device reads) */
    mov r8d, 5
    call set_desc
    lea rax, [rip + st_out]
    mov ecx, 1
    mov edx, 2
    xor r8d, r8d
    call set_desc
    mov eax, 3                         /* head 3 */
    call submit
    lea rbx, [rip + s_wst]
    movzx eax, byte ptr [rip + st_out]
    call putreg
    lea rbx, [rip + s_done]
    call puts
    jmp reset

fail:
    lea rbx, [rip + s_fail]
    call puts
    jmp reset

/* submit: puts head eax in the avail ring, notifies queue 0, polls the used ring for the
 * entry, prints " USED=<idx> ID=<id> LEN=<len> ISR=<InterruptStatus>" and acks the ISR. */
submit:
    lea rsi, [rip + vq_avail]
    movzx ecx, word ptr [rsi + 2]      /* avail idx */
    mov edx, ecx
    and edx, 7
    mov word ptr [rsi + 4 + rdx * 2], ax
    inc ecx
    mov word ptr [rsi + 2], cx         /* publish (x86 keeps store order) */
    mov r14d, ecx
    mov dword ptr [r13 + 0x050], 0     /* QueueNotify: queue 0 → ioeventfd */
    lea rsi, [rip + vq_used]
    mov ecx, 0x400000                  /* bounded poll */
2:  movzx eax, word ptr [rsi + 2]
    cmp eax, r14d
    je 3f
    pause
    dec ecx
    jnz 2b
    lea rbx, [rip + s_timeout]
    call puts
    jmp reset
3:  lea rbx, [rip + s_used]
    call putreg
    lea rsi, [rip + vq_used]
    lea edx, [r14d - 1]
    and edx, 7
    lea rsi, [rsi + 4 + rdx * 8]
    mov r15, rsi
    lea rbx, [rip + s_uid]
    mov eax, dword ptr [r15]
    call putreg
    lea rbx, [rip + s_len]
    mov eax, dword ptr [r15 + 4]
    call putreg
    mov r15d, dword ptr [r13 + 0x060]  /* InterruptStatus */
    lea rbx, [rip + s_isr]
    mov eax, r15d
    call putreg
    mov dword ptr [r13 + 0x064], r15d  /* InterruptACK */
    ret

#include "common.inc"
#include "virtio.inc"
#include "virtio_queue.inc"

s_used:    .asciz "USED"
s_uid:     .asciz "ID"
s_len:     .asciz "LEN"
s_isr:     .asciz "ISR"
s_st:      .asciz "BLK_STATUS"
s_wst:     .asciz "WRITE_STATUS"
s_data:    .asciz " DATA="
s_nl:      .asciz "\n"
s_done:    .asciz "\nDONE\n"
s_fail:    .asciz "\nFAIL\n"
s_timeout: .asciz "\nTIMEOUT\n"

    .balign 16
hdr_in:    .long 0, 0                  /* VIRTIO_BLK_T_IN, reserved */
           .quad 0                     /* sector 0 */
hdr_out:   .long 1, 0                  /* VIRTIO_BLK_T_OUT */
           .quad 1                     /* sector 1 */
st_in:     .byte 0xff
st_out:    .byte 0xff
    .balign 16
buf_out:   .ascii "HUSK-GUEST-WROTE"
           .space 512 - 16
    .balign 16
    .space 512
stack_top:
    .balign 4096
gap_pd:    .space 4096
    .balign 16
buf_in:    .space 512
