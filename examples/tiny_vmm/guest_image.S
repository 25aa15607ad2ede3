/* The guest program, assembled from guest.S by the build, as read-only data of the VMM. */
        .section .rodata
        .globl tiny_vmm_guest_start
        .globl tiny_vmm_guest_end
        .balign 16
tiny_vmm_guest_start:
        .incbin TINY_VMM_GUEST_BIN
tiny_vmm_guest_end:
        .section .note.GNU-stack,"",@progbits
