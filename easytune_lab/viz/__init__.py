"""easytune_lab.viz"""
