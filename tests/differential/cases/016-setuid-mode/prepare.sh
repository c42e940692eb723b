chmod 4755 s && chmod 2750 g && chmod 1777 d
