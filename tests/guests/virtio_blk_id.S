/* Asks each of the first two virtio-mmio devices (virtio-blk disks) for its serial, the way
 * Linux fills /sys/block/vdX/serial: per disk, bring it to DRIVER_OK (virtio_queue.inc),
 * send one VIRTIO_BLK_T_GET_ID request (header → 20-byte device-writable buffer, prefilled
 * with 0xff so NUL padding shows → status byte), print the used entry, the status and the
 * 20 bytes in hex as " ID_STATUS=.. SERIAL=<40 hex digits>", then reset the device and
 * clear the shared queue memory for the next one. Ends with DONE and an i8042 reset. */
    .intel_syntax noprefix
    .text
    .globl _start
    .code64
_start:
    lea rsp, [rip + stack_top]
    call map_gap
    xor r12d, r12d                     /* disk index */
next_disk:
    mov r13d, r12d
    shl r13d, 12
    add r13d, 0xd0000000               /* its virtio-mmio window */
    lea rbx, [rip + s_disk]
    mov eax, r12d
    call putreg

    /* Fresh queue memory and a 0xff-filled id buffer. */
    lea rdi, [rip + vq_desc]
    xor eax, eax
    mov ecx, 16 * 8
    rep stosb
    lea rdi, [rip + vq_avail]
    mov ecx, 4 + 2 * 8 + 2
    rep stosb
    lea rdi, [rip + vq_used]
    mov ecx, 4 + 8 * 8 + 2
    rep stosb
    lea rdi, [rip + id_buf]
    mov al, 0xff
    mov ecx, 20
    rep stosb
    mov byte ptr [rip + st_id], 0xff

    call blk_init

    /* GET_ID: descriptors 0 (header) → 1 (20 bytes, W) → 2 (status, W). */
    lea rdi, [rip + vq_desc]
    lea rax, [rip + hdr_id]
    mov ecx, 16
    mov edx, 1                         /* NEXT */
    mov r8d, 1
    call set_desc
    lea rax, [rip + id_buf]
    mov ecx, 20
    mov edx, 3                         /* NEXT | WRITE */
    mov r8d, 2
    call set_desc
    lea rax, [rip + st_id]
    mov ecx, 1
    mov edx, 2                         /* WRITE */
    xor r8d, r8d
    call set_desc
    xor eax, eax                       /* head 0 */
    call submit

    lea rbx, [rip + s_st]
    movzx eax, byte ptr [rip + st_id]
    call putreg
    lea rbx, [rip + s_serial]
    call puts
    lea r14, [rip + id_buf]
    xor r15d, r15d
1:  movzx eax, byte ptr [r14 + r15]
    mov ecx, 2
    call puthex
    inc r15d
    cmp r15d, 20
    jb 1b
    lea rbx, [rip + s_nl]
    call puts

    mov dword ptr [r13 + 0x070], 0     /* Status: reset (the worker lets go of the queue) */
    inc r12d
    cmp r12d, 2
    jb next_disk
    lea rbx, [rip + s_done]
    call puts
    jmp reset

fail:
    lea rbx, [rip + s_fail]
    call puts
    jmp reset

/* submit: puts head eax in the avail ring, notifies queue 0, polls the used ring for the
 * entry, prints " USED=<idx> ID=<id> LEN=<len>" and acks the InterruptStatus. */
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
    mov eax, dword ptr [r13 + 0x060]   /* InterruptStatus */
    mov dword ptr [r13 + 0x064], eax   /* InterruptACK */
    ret

#include "common.inc"
#include "virtio.inc"
#include "virtio_queue.inc"

s_disk:    .asciz "DISK"
s_used:    .asciz "USED"
s_uid:     .asciz "ID"
s_len:     .asciz "LEN"
s_st:      .asciz "ID_STATUS"
s_serial:  .asciz " SERIAL="
s_nl:      .asciz "\n"
s_done:    .asciz "DONE\n"
s_fail:    .asciz "\nFAIL\n"
s_timeout: .asciz "\nTIMEOUT\n"

    .balign 16
hdr_id:    .long 8, 0                  /* VIRTIO_BLK_T_GET_ID, reserved */
           .quad 0
st_id:     .byte 0xff
    .balign 16
id_buf:    .space 20
    .balign 16
    .space 512
stack_top:
    .balign 4096
gap_pd:    .space 4096
