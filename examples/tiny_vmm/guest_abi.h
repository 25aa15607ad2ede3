/* tiny_vmm: the contract between the guest program and the VMM, as plain macros so that
 * both the guest's assembly (guest.S, run through the C preprocessor) and the VMM's C++
 * (layout.hpp) read the same numbers.
 *
 * Guest physical memory: region 0 is [0, 1 MiB), region 1 is [2 MiB, 3 MiB); the MiB
 * between them is a hole, like the x86 PCI hole below 4 GiB.
 *
 * The ring, in the spirit of a virtio split queue but tiny:
 * - a request table of TVM_RING_SIZE requests of TVM_REQ_SIZE bytes each (op, length,
 *   file offset, guest buffer address, status), all little-endian;
 * - the avail ring: a 16-bit index the guest increments after posting a request, then
 *   TVM_RING_SIZE 16-bit request numbers;
 * - the used ring: a 16-bit index the device increments after completing a request, then
 *   TVM_RING_SIZE entries of (32-bit request number, 32-bit bytes moved).
 * The guest posts a request and writes any value to TVM_PORT_DOORBELL; the device serves
 * every request posted since it last looked and writes each one's status. Bytes written to
 * TVM_PORT_CONSOLE go to the VMM's console. */
#ifndef TINY_VMM_GUEST_ABI_H
#define TINY_VMM_GUEST_ABI_H

#define TVM_REGION0_BASE 0x0
#define TVM_REGION0_SIZE 0x100000
#define TVM_REGION1_BASE 0x200000
#define TVM_REGION1_SIZE 0x100000

#define TVM_CODE_ADDR 0x8000
#define TVM_STACK_TOP 0x7000

#define TVM_RING_SIZE 8
#define TVM_REQ_SIZE 32
#define TVM_REQ_TABLE 0x1000
#define TVM_REQ_OP 0
#define TVM_REQ_LEN 4
#define TVM_REQ_OFFSET 8
#define TVM_REQ_ADDR 16
#define TVM_REQ_STATUS 24
#define TVM_AVAIL_IDX 0x1400
#define TVM_AVAIL_RING 0x1402
#define TVM_USED_IDX 0x1500
#define TVM_USED_RING 0x1508

#define TVM_OP_READ 1
#define TVM_OP_WRITE 2
#define TVM_STATUS_OK 0
#define TVM_STATUS_IOERR 1
#define TVM_STATUS_BADREQ 2
#define TVM_STATUS_PENDING 0xff

#define TVM_PORT_CONSOLE 0x3f8
#define TVM_PORT_DOORBELL 0x510

/* The guest's job: block i (TVM_BLOCK_SIZE bytes at file offset i * TVM_BLOCK_SIZE) is read
 * into a buffer in region 0 for even i and in region 1 for odd i, every 32-bit word of it is
 * XORed with TVM_XOR_KEY (which swaps the case of ASCII letters), and it is written back to
 * the output file at the same offset. */
#define TVM_BLOCK_SIZE 4096
#define TVM_BLOCK_SHIFT 12
#define TVM_NUM_BLOCKS 8
#define TVM_LOW_BUFFERS 0x20000
#define TVM_HIGH_BUFFERS 0x200000
#define TVM_XOR_KEY 0x20202020

#endif
