"""Tests of hal.rfid: the real token reader drivers."""
