"""easytune_lab.analysis"""
