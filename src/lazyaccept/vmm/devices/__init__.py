"""The q35 devices a TD guest reaches through the VMM (fw_cfg, PCI host and LPC, CMOS/RTC, ACPI PM timer, 16550
UART, x2APIC, CPUID answers); vmm/platform.py owns them for one TD and answers TDG.VP.VMCALL."""
