/* Prints a marker on the serial port, then resets through the i8042.
 * Two entries: _start is the Linux 64-bit boot entry husk-vmm uses (long mode, paging on);
 * _start32 is a PVH entry (32-bit, paging off) so QEMU's -kernel boots the same image for
 * the benchmark. QEMU microvm has no i8042, so that path ends in a triple fault (#UD with
 * an empty IDT), which `-no-reboot` turns into a clean QEMU exit. */
    .intel_syntax noprefix
    .text
    .globl _start
    .code64
_start:
    lea rsp, [rip + stack_top]
    lea rbx, [rip + msg]
    call puts
    jmp reset

#include "common.inc"

    .code32
    .globl _start32
_start32:
    mov dx, 0x3f8
    mov ebx, offset msg
5:  mov al, [ebx]
    test al, al
    jz 6f
    out dx, al
    inc ebx
    jmp 5b
6:  lidt [bad_idt]
    ud2

bad_idt: .word 0
    .long 0
msg: .asciz "HUSK-TINY-OK\n"
    .balign 16
    .space 256
stack_top:

    /* XEN_ELFNOTE_PHYS32_ENTRY (18): the PVH entry point QEMU looks for. */
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long _start32
    .popsection
