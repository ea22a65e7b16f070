"""easytune_lab.eval"""
