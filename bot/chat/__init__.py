"""The Discord side of the bot: the Bot subclass and process runner, intake of requests,
how jobs show in Discord, and the texts and reports moderators and members read."""
