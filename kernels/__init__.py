"""mrc.kernels"""
