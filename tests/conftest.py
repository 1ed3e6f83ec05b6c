from hypothesis import settings

# Property tests check behaviour, not speed (timing lives in bench/): a loaded CI machine must not
# fail them on hypothesis's per-example deadline.
settings.register_profile("hub", deadline=None)
settings.load_profile("hub")
