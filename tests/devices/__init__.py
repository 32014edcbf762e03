"""Tests of layer 5: dmabuf.devices."""
