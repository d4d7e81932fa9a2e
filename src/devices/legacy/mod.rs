//! Legacy x86 devices: the 8250 serial console (vm-superio) and the i8042 reset line.
