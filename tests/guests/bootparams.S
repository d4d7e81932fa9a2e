/* Reports what husk-vmm placed in the zero page (rsi, Linux 64-bit boot protocol):
 * the command line (cmd_line_ptr, 0x228), the e820 entry count (0x1e8), the boot flag
 * (0x1fe) and the header magic (0x202), then resets through the i8042. */
    .intel_syntax noprefix
    .text
    .globl _start
    .code64
_start:
    lea rsp, [rip + stack_top]
    mov r12, rsi
    lea rbx, [rip + s_cmd]
    call puts
    mov ebx, dword ptr [r12 + 0x228]
    call puts
    lea rbx, [rip + s_e820]
    call puts
    movzx eax, byte ptr [r12 + 0x1e8]
    mov ecx, 2
    call puthex
    lea rbx, [rip + s_flag]
    call puts
    movzx eax, word ptr [r12 + 0x1fe]
    mov ecx, 4
    call puthex
    lea rbx, [rip + s_hdr]
    call puts
    mov eax, dword ptr [r12 + 0x202]
    mov ecx, 8
    call puthex
    lea rbx, [rip + s_end]
    call puts
    jmp reset

#include "common.inc"

s_cmd:  .asciz "CMDLINE="
s_e820: .asciz "|\nE820="
s_flag: .asciz "\nBOOTFLAG="
s_hdr:  .asciz "\nHEADER="
s_end:  .asciz "\nDONE\n"
    .balign 16
    .space 256
stack_top:
