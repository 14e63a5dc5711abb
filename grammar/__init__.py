"""mrc.grammar"""
