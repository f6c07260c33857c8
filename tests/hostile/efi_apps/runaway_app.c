/* A UEFI application that never returns: the run must end on its instruction or time budget with a report. */
#include "efi.h"

EFI_STATUS efi_main(EFI_HANDLE image, SYSTEM_TABLE *system_table) {
  volatile UINT64 n = 0;
  gST = system_table;
  print("runaway app: spinning\r\n");
  for (;;)
    n++;
  return EFI_SUCCESS;
}
