/* Loads an empty IDT and raises #UD: the CPU can deliver neither it nor the #GP/#DF that
 * follow, and shuts down (KVM_EXIT_SHUTDOWN). Not int3: on PVM hosts KVM's emulator cannot
 * deliver a software interrupt and reports an emulation failure instead.
 * husk-vmm must fail with one line. */
    .intel_syntax noprefix
    .text
    .globl _start
    .code64
_start:
    mov dx, 0x3f8
    mov al, 'T'
    out dx, al
    mov al, '\n'
    out dx, al
    lidt [rip + bad_idt]
    ud2
    jmp reset

#include "common.inc"

bad_idt: .word 0
    .quad 0
