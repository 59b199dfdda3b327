"""The gateway: routes prediction requests to replicas (least outstanding requests), holds them while an API
scales from zero, counts traffic. Wired by modelport.cluster; the controller talks to it only through
RouteSink / TrafficSource.
"""
