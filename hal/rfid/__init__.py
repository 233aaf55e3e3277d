"""Real RFID/NFC token reader drivers (hal.interfaces.TokenReader); pn532: NXP PN532 over HSU."""
